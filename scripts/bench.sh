#!/usr/bin/env bash
# Performance benchmark of the warehouse query (README "Performance"; issue 5).
#
#   scripts/bench.sh                  baseline vs project vs floor on ClickHouse 18.16 and chDB,
#                                     20 M events; prints one table; exit 1 if a required target fails
#   scripts/bench.sh --alternatives   also the query shapes that were measured and not adopted
#   scripts/bench.sh --incremental    the function's refreshes of a running experiment: full first
#                                     refresh, steady state 15 minutes later (incremental), one day
#                                     later, scan floor; server (query_log sums) and chDB; exit 1 if
#                                     a required target fails (README "Incremental refresh")
#   scripts/bench.sh --large          100 M events (10 M identities) under the function's memory
#                                     settings (loads about 5 GB once; --large-events N for another size)
#   scripts/bench.sh --handler        handler cost outside the query: binary size, cold start, warm
#                                     invoke overhead, peak RSS, per release-profile variant (builds
#                                     each variant; cargo lambda watch/invoke; about 30 minutes)
#   scripts/bench.sh --health         cost of the health computed on every answer (pure; no servers used)
#   scripts/bench.sh --cluster        the full refresh on the 2 x 2 cluster (scripts/cluster.sh), sharded plan
#                                     against the exact plan at 4 M and 20 M events, initial and secondary
#                                     query memory per node, then a steady-state incremental refresh; exit 1
#                                     if a required target fails (README "Running on a cluster")
#   --runs N (>= 5, default 5), --no-chdb
#
# Starts the private servers (scripts/servers.sh) and installs chDB / cargo-lambda when missing
# (scripts/tools.sh). Data stays loaded in the databases exposures_bench* and target/bench/chdb,
# so reruns skip the load. Reports are saved under target/bench/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

source scripts/tools.sh
scripts/servers.sh start
export EXPOSURES_BENCH_CLICKHOUSE_URL="http://127.0.0.1:${EXPOSURES_CH_HTTP_PORT:-18123}"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

export EXPOSURES_BENCH_POSTGRES_URL="postgres://postgres@127.0.0.1:${EXPOSURES_PG_PORT:-15432}"

bench=query
args=()
for arg in "$@"; do
    case $arg in
    --cluster)
        scripts/cluster.sh start
        eval "$(scripts/cluster.sh env)"
        args+=("$arg")
        ;;
    --handler) bench=handler ;;
    --health) bench=health ;;
    *) args+=("$arg") ;;
    esac
done

echo "== machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, $(. /etc/os-release && echo "$PRETTY_NAME"), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "== cargo bench --bench $bench -- ${args[*]}"
cargo bench --quiet --bench "$bench" -- "${args[@]}"
