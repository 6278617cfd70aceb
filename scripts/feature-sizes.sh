#!/usr/bin/env bash
# Prints the size of the stripped static (musl) static-service example for feature sets, as
# the README's feature table shows: no default features, each default feature alone, the
# default, and the C opt-ins (tls-ring, zstd-c compile C for the musl target, so this
# installs musl-tools (musl-gcc) when missing).
# Usage: bash scripts/feature-sizes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
rustup target add "$target" >/dev/null 2>&1 || true
if ! command -v musl-gcc >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null
fi
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld
export CC_x86_64_unknown_linux_musl=musl-gcc
base=""
printf '| features | stripped static binary | delta |\n|---|---|---|\n'
for features in "" tls "lz4,zstd" default "tls-ring,lz4,zstd" "default,zstd-c"; do
    dir="target/feature-sizes/${features:-none}"
    cargo build --quiet --release --target "$target" --example static-service \
        --target-dir "$dir" --no-default-features ${features:+--features "$features"} 2>/dev/null
    size=$(stat -c %s "$dir/$target/release/examples/static-service")
    [ -n "$base" ] || base=$size
    printf '| %s | %s bytes (%.2f MiB) | %+d KiB |\n' "${features:-(none)}" "$size" \
        "$(awk "BEGIN{print $size/1048576}")" $(( (size - base) / 1024 ))
done
echo "(measured $(date -u +%Y-%m-%d) with: bash scripts/feature-sizes.sh)"
