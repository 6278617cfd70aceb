#!/usr/bin/env bash
# The test command: sets up the test brokers (scripts/setup-test-env.sh), then runs every
# test of the library against them, in parallel (cargo-nextest; cargo test as a fallback).
# Set PUREKAFKA_TEST_BROKERS=host:port,... to run the broker tests against another cluster.
# Usage: bash scripts/test.sh [extra nextest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-test-env.sh
export PUREKAFKA_MOCK_CLUSTER_BIN="$PWD/testcontainers/mock-cluster/target/release/mock-cluster"
if command -v cargo-nextest >/dev/null 2>&1; then
    cargo nextest run --no-fail-fast "$@"
    cargo test --doc
else
    cargo test --no-fail-fast "$@"
fi
(cd testcontainers/testkit && cargo test --quiet)
