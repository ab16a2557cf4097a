#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, starts the
# private ClickHouse and PostgreSQL servers, then runs fmt, clippy, unit tests and
# the integration tests (real servers, chDB, cargo lambda). Servers stay up for
# the next run; `scripts/servers.sh stop` stops them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source scripts/tools.sh
scripts/servers.sh start
scripts/cluster.sh start
eval "$(scripts/cluster.sh env)"

export EXPOSURES_TEST_CLICKHOUSE_URL="http://127.0.0.1:${EXPOSURES_CH_HTTP_PORT:-18123}"
export EXPOSURES_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:${EXPOSURES_PG_PORT:-15432}"
# The fault and TLS tests (tests/it/faults.rs, tls.rs, load.rs): servers.sh's TLS PostgreSQL,
# ClickHouse https port and victim ClickHouse (which those tests start, kill and restart).
export EXPOSURES_TEST_POSTGRES_TLS_URL="postgres://postgres@127.0.0.1:${EXPOSURES_PG_TLS_PORT:-15433}"
export EXPOSURES_TEST_CLICKHOUSE_HTTPS_URL="https://127.0.0.1:${EXPOSURES_CH_HTTPS_PORT:-18443}"
export EXPOSURES_TEST_CLICKHOUSE_VICTIM_URL="http://127.0.0.1:${EXPOSURES_CH_VICTIM_HTTP_PORT:-18124}"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --all-targets

# What `sam build` runs (BuildMethod: rust-cargolambda): a release build for Lambda's arm64.
# Cross-compiling needs the aarch64 standard library; where rustup cannot fetch it,
# build for x86-64 instead (README: how to build arm64 elsewhere).
echo "== cargo lambda build --release --arm64"
if rustup target list --installed 2>/dev/null | grep -q '^aarch64-unknown-linux-gnu$' ||
    rustup target add aarch64-unknown-linux-gnu </dev/null; then
    arch=--arm64 machine=183 # ELF e_machine of aarch64
else
    echo "test.sh: no aarch64 target here; building --x86-64 instead" >&2
    arch=--x86-64 machine=62 # x86-64
fi
cargo lambda build --release "$arch" </dev/null
bootstrap=target/lambda/exposures/bootstrap
[ "$(od -An -tu2 -j18 -N2 "$bootstrap" | tr -d ' ')" = "$machine" ] ||
    { echo "test.sh: $bootstrap is not a $arch binary" >&2; exit 1; }
echo "test.sh: built $bootstrap ($arch, $(stat -c %s "$bootstrap") bytes)"
