#!/usr/bin/env bash
# Proves the "static and C-free" claims, printing the figures:
#   1. the default features (plaintext, TLS with rustls + rustls-graviola, SASL, gzip, snappy,
#      lz4, zstd) compile no C: CC/CXX point to a program that fails, in a clean target
#      directory, and `cargo tree` lists no cc / *-sys / cmake / ring / aws-lc crate;
#   2. examples/static-service builds for x86_64-unknown-linux-musl (profile `static`: release
#      optimised for size), linked by rustup's own
#      rust-lld (no system linker), and `file` / `ldd` confirm it is static;
#   3. that binary, alone in an empty root (no /etc, no libc, no resolv.conf), produces and
#      consumes through a consumer group against a broker on 127.0.0.1;
#   4. the stripped binary's size is printed (goal: under 5 MB);
#   5. the same binary, in an empty root with only a CA file beside it, produces and consumes
#      over TLS: stunnel (OpenSSL) in front of tansu, tansu advertising only stunnel's port.
# Build scripts and proc-macros are still linked for the host by the system `cc`: that is
# the one C-toolchain piece every Rust build needs.
# Usage: bash scripts/static-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
work=$(mktemp -d)
cleanup() {
    [ -n "${broker_pid:-}" ] && kill "$broker_pid" 2>/dev/null || true
    [ -n "${feeder_pid:-}" ] && kill "$feeder_pid" 2>/dev/null || true
    [ -n "${tansu_pid:-}" ] && kill "$tansu_pid" 2>/dev/null || true
    [ -n "${stunnel_pid:-}" ] && kill "$stunnel_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== 1. default features compile no C"
c_crates=$(cargo tree -e normal,build --prefix none | awk '{print $1}' | sort -u \
    | grep -E '^(cc|cmake|ring)$|-sys$|^aws-lc' || true)
if [ -n "$c_crates" ]; then
    echo "FAIL: the default build pulls in crates that need a C toolchain:"; echo "$c_crates"
    exit 1
fi
echo "cargo tree: no cc, *-sys, cmake, ring or aws-lc crate"
for crate in rustls rustls-graviola tokio-rustls lz4_flex ruzstd; do
    cargo tree -e normal --prefix none | awk '{print $1}' | grep -qx "$crate" \
        || { echo "FAIL: the default build lacks $crate"; exit 1; }
done
echo "default features include rustls, rustls-graviola, tokio-rustls, lz4_flex, ruzstd"
printf '#!/bin/sh\necho "a C compiler was invoked: $0 $*" >&2\nexit 1\n' > "$work/no-cc"
chmod +x "$work/no-cc"
CC="$work/no-cc" CXX="$work/no-cc" cargo build --quiet --lib --target-dir "$work/no-c-target"
echo "CC=CXX=<failing program> cargo build (clean target dir): ok"

echo "== 2. static musl build linked by rust-lld"
rustup target add "$target" >/dev/null 2>&1 || rustup target add "$target"
CC="$work/no-cc" CXX="$work/no-cc" \
CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
    cargo build --quiet --profile static --target "$target" --example static-service
target_dir=$(cargo metadata --no-deps --format-version 1 | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
bin="$target_dir/$target/static/examples/static-service"
file "$bin"
file "$bin" | grep -qE 'statically linked|static-pie linked' || { echo "FAIL: not static"; exit 1; }
ldd_out=$(ldd "$bin" 2>&1 || true)
echo "ldd: $ldd_out"
echo "$ldd_out" | grep -qE 'statically linked|not a dynamic executable' || { echo "FAIL: ldd sees dynamic deps"; exit 1; }
size=$(stat -c %s "$bin")
echo "stripped static binary: $bin = $size bytes ($(awk "BEGIN{printf \"%.2f\", $size/1048576}") MiB)"

echo "== 3. run in an empty root against a broker on 127.0.0.1"
mock="${PUREKAFKA_MOCK_CLUSTER_BIN:-testcontainers/mock-cluster/target/release/mock-cluster}"
[ -x "$mock" ] || cargo build --quiet --release --manifest-path testcontainers/mock-cluster/Cargo.toml
mkfifo "$work/mock-in"
sleep 600 > "$work/mock-in" & feeder_pid=$!
"$mock" --brokers 1 --topic static-check:3 < "$work/mock-in" > "$work/mock-out" 2> "$work/mock-err" & broker_pid=$!
for _ in $(seq 1 100); do grep -q BOOTSTRAP "$work/mock-out" 2>/dev/null && break; sleep 0.1; done
bootstrap=$(awk '/^BOOTSTRAP/{print $2}' "$work/mock-out")
[ -n "$bootstrap" ] || { echo "FAIL: mock cluster did not start"; cat "$work/mock-err"; exit 1; }
root="$work/root"
mkdir -p "$root"
cp "$bin" "$root/static-service"
echo "empty root holds: $(cd "$root" && find . | tr '\n' ' ')"
env -i PATH="$PATH" KAFKA_BROKERS="$bootstrap" KAFKA_CLIENT_ID=static-check \
    unshare --user --map-root-user chroot "$root" /static-service --topic static-check --group static-check-group --count 100
echo "empty-root run: ok"

echo "== 5. over TLS in an empty root, with only a CA file: stunnel in front of tansu"
tansu="${PUREKAFKA_TANSU_BIN:-$HOME/.cargo/bin/tansu}"
# .ci/run installs tansu in the background while this script builds; wait for it.
for _ in $(seq 1 120); do [ -x "$tansu" ] && break; sleep 5; done
[ -x "$tansu" ] || { echo "FAIL: tansu not found at $tansu (testcontainers/tansu/install.sh)"; exit 1; }
free_port() {
    local p
    while :; do
        p=$(( 20000 + RANDOM % 40000 ))
        (echo > "/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}
certs="$work/certs"
mkdir -p "$certs"
(
    cd "$certs"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj "/CN=static-check CA" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    openssl req "${ec[@]}" -keyout server.key -out server.csr -subj "/CN=static-check broker" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' > server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
        -days 2 -extfile server.ext 2>/dev/null
)
tansu_port=$(free_port)
tls_port=$(free_port)
"$tansu" broker --storage-engine=memory://tansu/ --listener-url "tcp://127.0.0.1:$tansu_port" \
    --advertised-listener-url "tcp://127.0.0.1:$tls_port" > "$work/tansu.log" 2>&1 & tansu_pid=$!
printf 'foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:%s\nconnect = 127.0.0.1:%s\ncert = %s\nkey = %s\n' \
    "$tls_port" "$tansu_port" "$certs/server.pem" "$certs/server.key" > "$certs/stunnel.conf"
stunnel4 "$certs/stunnel.conf" > "$work/stunnel.log" 2>&1 & stunnel_pid=$!
for _ in $(seq 1 100); do
    (echo > "/dev/tcp/127.0.0.1/$tansu_port") 2>/dev/null \
        && (echo > "/dev/tcp/127.0.0.1/$tls_port") 2>/dev/null && break
    sleep 0.1
done
cp "$certs/ca.pem" "$root/ca.pem"
echo "empty root holds: $(cd "$root" && find . | tr '\n' ' ')"
env -i PATH="$PATH" KAFKA_BROKERS="127.0.0.1:$tls_port" KAFKA_SSL=true KAFKA_SSL_CA_LOCATION=/ca.pem \
    KAFKA_CLIENT_ID=static-check-tls \
    unshare --user --map-root-user chroot "$root" /static-service --topic static-check-tls \
    --create 3 --group static-check-tls-group --count 100 \
    || { echo "FAIL: TLS run"; tail -20 "$work/stunnel.log" "$work/tansu.log"; exit 1; }
echo "empty-root TLS run (stunnel + tansu, only ca.pem beside the binary): ok"
