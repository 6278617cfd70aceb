#!/usr/bin/env bash
# The client's CPU cost of TLS: examples/produce_perf against one tansu broker, once over
# plaintext and once through stunnel (TLS 1.3, OpenSSL) in front of the same kind of broker,
# printing the client CPU per record of each (getrusage of the client process only; tansu and
# stunnel run in their own processes). A measurement, never asserted.
# Usage: bash scripts/tls-cost.sh [RECORDS] [SIZE]   (defaults 300000 records of 100 bytes)
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-300000}
size=${2:-100}
tansu="${PUREKAFKA_TANSU_BIN:-$HOME/.cargo/bin/tansu}"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() {
    local p
    while :; do
        p=$(( 20000 + RANDOM % 40000 ))
        (echo > "/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}
wait_port() { for _ in $(seq 1 100); do (echo > "/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "nothing on $1"; exit 1; }
(
    cd "$work"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj "/CN=tls-cost CA" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    openssl req "${ec[@]}" -keyout server.key -out server.csr -subj "/CN=tls-cost" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
        -days 2 -extfile server.ext 2>/dev/null
)
plain=$(free_port)
"$tansu" broker --storage-engine=memory://tansu/ --listener-url "tcp://127.0.0.1:$plain" \
    --advertised-listener-url "tcp://127.0.0.1:$plain" > "$work/plain.log" 2>&1 & pids+=($!)
behind=$(free_port)
tls=$(free_port)
"$tansu" broker --storage-engine=memory://tansu/ --listener-url "tcp://127.0.0.1:$behind" \
    --advertised-listener-url "tcp://127.0.0.1:$tls" > "$work/tls.log" 2>&1 & pids+=($!)
printf 'foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\ncert = %s\nkey = %s\n' \
    "$tls" "$behind" "$work/server.pem" "$work/server.key" > "$work/stunnel.conf"
stunnel4 "$work/stunnel.conf" > "$work/stunnel.log" 2>&1 & pids+=($!)
wait_port "$plain"; wait_port "$behind"; wait_port "$tls"
"$tansu" topic create perf --partitions 6 --broker "tcp://127.0.0.1:$plain" >/dev/null
"$tansu" topic create perf --partitions 6 --broker "tcp://127.0.0.1:$behind" >/dev/null
cargo build --release --quiet --example produce_perf
target_dir=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="$target_dir/release/examples/produce_perf"
echo "== $(date -u +%FT%TZ), load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "-- plaintext"
KAFKA_BROKERS="127.0.0.1:$plain" "$bin" --topic perf --records "$records" --size "$size" \
    | grep -E 'command|records:|throughput|client CPU'
echo "-- TLS (stunnel in front of tansu; the client verifies the broker against the CA)"
KAFKA_BROKERS="127.0.0.1:$tls" "$bin" --topic perf --records "$records" --size "$size" \
    --set security.protocol=ssl --set "ssl.ca.location=$work/ca.pem" \
    | grep -E 'command|records:|throughput|client CPU'
echo "== done $(date -u +%FT%TZ), load: $(cut -d' ' -f1-3 /proc/loadavg)"
