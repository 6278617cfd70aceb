#!/usr/bin/env bash
# Supply-chain checks (run by .ci/run): cargo deny with deny.toml — licenses, banned crates (no
# C toolchain in the default features), sources (crates.io only) — and, only where a copy of
# the RustSec advisory database exists, advisories. Also shows with `cargo tree` that the
# default build has no C-building crate, which needs no cargo-deny.
#
# Advisories: cargo-deny reads the RustSec database from a git clone under its `db-path`
# (default ~/.cargo/advisory-dbs) and normally fetches it from GitHub. CI reaches package
# registries only, and no registry ships that database, so in CI the advisories are NOT
# checked. With network: `cargo deny check advisories`. Offline with a clone made elsewhere:
# put it at ~/.cargo/advisory-dbs/advisory-db-3157b0e258782691 and this script runs
# `cargo deny --offline check advisories` against it (and says how old it is).
#
# cargo-deny: `cargo install --locked cargo-deny --version 0.20.2` (.ci/run does it, cached in
# ~/.cargo/bin). Without it this script fails in CI (CI=true) and skips the deny checks
# elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== default features: no crate that compiles C (cargo tree)"
banned='^(cc|cmake|ring|aws-lc-sys|aws-lc-rs|openssl-sys|zstd-sys|lz4-sys|libz-sys|rdkafka-sys) '
if cargo tree -e normal,build --prefix none | grep -E "$banned"; then
    echo "a C-building crate is in the default build" >&2
    exit 1
fi
echo "ok"

if ! command -v cargo-deny >/dev/null 2>&1; then
    if [ "${CI:-}" = "true" ]; then
        echo "cargo-deny is not installed (.ci/run installs it)" >&2
        exit 1
    fi
    echo "cargo-deny not installed (cargo install --locked cargo-deny); skipping deny checks" >&2
    exit 0
fi
cargo-deny --version

# Everything cargo-deny reads comes from crates.io; fetched first so that it runs --offline
# (it then never tries GitHub for anything).
cargo fetch --locked --quiet

echo "== cargo deny, default features: licenses, bans (no C), sources"
cargo deny --offline --locked check licenses bans sources

echo "== cargo deny, all features (the opt-in C providers included): licenses, sources"
cargo deny --offline --locked --all-features check licenses sources

echo "== cargo deny: advisories"
db_root="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
db=""
for d in "$db_root"/advisory-db-*; do
    if [ -d "$d" ] && git -C "$d" rev-parse --verify -q HEAD >/dev/null; then db="$d"; fi
done
if [ -n "$db" ]; then
    echo "advisory database: $db, last change $(git -C "$db" show -s --format=%cI HEAD)"
    cargo deny --offline --locked check advisories
    cargo deny --offline --locked --all-features check advisories
else
    echo "ADVISORIES NOT CHECKED: no RustSec advisory database in $db_root, and it can only be"
    echo "fetched from GitHub, which this machine cannot reach. Known advisories of the"
    echo "dependencies are listed with their reasons in deny.toml [advisories]."
fi
