#!/usr/bin/env bash
# The public API's semver report: `cargo semver-checks` between the commit named in
# .ci/semver-baseline (the main that landed before this change) and the work tree.
# A report, not a gate: purekafka is 0.x, and a breaking change is allowed when the closing
# note says so; CI prints what broke so that nobody breaks the API without seeing it.
# Installs cargo-semver-checks (crates.io, ~8 CPU-minutes once; cached in ~/.cargo/bin).
# Usage: bash scripts/semver-report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.51.0
if ! cargo semver-checks --version 2>/dev/null | grep -qF "$version"; then
    echo "installing cargo-semver-checks $version..."
    cargo install --locked --quiet cargo-semver-checks --version "$version"
fi
baseline=$(tr -d '[:space:]' < .ci/semver-baseline)
if ! git cat-file -e "$baseline^{commit}" 2>/dev/null; then
    echo "semver report skipped: baseline $baseline is not in this clone's history"
    exit 0
fi
echo "semver report: $baseline (last landed main) -> work tree"
if cargo semver-checks --baseline-rev "$baseline"; then
    echo "semver report: no breaking change"
else
    echo "semver report: breaking changes (or a failed check) above: allowed in 0.x, say so in the closing note"
fi
