#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, starts the
# private ClickHouse and PostgreSQL servers, then runs fmt, clippy, unit tests and
# the integration tests (real servers, chDB, cargo lambda). Servers stay up for
# the next run; `scripts/servers.sh stop` stops them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source scripts/tools.sh
scripts/servers.sh start

export EXPOSURES_TEST_CLICKHOUSE_URL="http://127.0.0.1:${EXPOSURES_CH_HTTP_PORT:-18123}"
export EXPOSURES_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:${EXPOSURES_PG_PORT:-15432}"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --all-targets
