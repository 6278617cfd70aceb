#!/usr/bin/env bash
# Starts a single tansu broker with in-memory storage on 127.0.0.1:PORT, in the foreground.
# Stop it with Ctrl-C (or kill its pid). Run install.sh first.
#
# Usage: testcontainers/tansu/start.sh PORT
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 PORT" >&2
    exit 2
fi
port=$1
tansu="${PUREKAFKA_TANSU_BIN:-}"
if [ -z "$tansu" ]; then
    if [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/tansu" ]; then
        tansu="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
    elif command -v tansu >/dev/null; then
        tansu=$(command -v tansu)
    else
        echo "tansu is not installed: run $(dirname "$0")/install.sh" >&2
        exit 1
    fi
fi

exec "$tansu" broker \
    --storage-engine=memory://tansu/ \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port"
