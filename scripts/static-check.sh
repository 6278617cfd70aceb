#!/usr/bin/env bash
# Proves the "static and C-free" claims, printing the figures:
#   1. the default features compile no C: CC/CXX point to a program that fails, in a clean
#      target directory, and `cargo tree` lists no cc / *-sys / ring / aws-lc crate;
#   2. examples/static-service builds for x86_64-unknown-linux-musl, linked by rustup's own
#      rust-lld (no system linker), and `file` / `ldd` confirm it is static;
#   3. that binary, alone in an empty root (no /etc, no libc, no resolv.conf), produces and
#      consumes through a consumer group against a broker on 127.0.0.1;
#   4. the stripped binary's size is printed (goal: under 5 MB).
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
printf '#!/bin/sh\necho "a C compiler was invoked: $0 $*" >&2\nexit 1\n' > "$work/no-cc"
chmod +x "$work/no-cc"
CC="$work/no-cc" CXX="$work/no-cc" cargo build --quiet --lib --target-dir "$work/no-c-target"
echo "CC=CXX=<failing program> cargo build (clean target dir): ok"

echo "== 2. static musl build linked by rust-lld"
rustup target add "$target" >/dev/null 2>&1 || rustup target add "$target"
CC="$work/no-cc" CXX="$work/no-cc" \
CARGO_TARGET_X86_64_UNKNOWN_LINUX_MUSL_LINKER=rust-lld \
    cargo build --quiet --release --target "$target" --example static-service
bin="target/$target/release/examples/static-service"
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
