#!/usr/bin/env bash
# Installs tansu 0.6.0 (a Kafka-compatible broker written in Rust) into ~/.cargo/bin, once.
# The build takes about 13 minutes on a 2-core machine; it is skipped when the installed
# binary already reports 0.6.0.
#
# Usage: testcontainers/tansu/install.sh
set -euo pipefail

version=0.6.0
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
bin="$cargo_home/bin/tansu"

if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qF "$version"; then
    echo "tansu $version already installed at $bin"
    exit 0
fi

echo "installing tansu $version into $cargo_home/bin (about 13 minutes on 2 cores)..."
cargo install tansu --version "$version" --locked --no-default-features --features dynostore
"$bin" --version
