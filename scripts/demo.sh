#!/usr/bin/env bash
# The end-to-end demo, from a fresh Debian machine (as root; fine with CI=true and no terminal):
# installs what is missing, starts the private ClickHouse and PostgreSQL servers, runs the
# function in the local Lambda emulator (`cargo lambda watch`), applies the migrations, seeds
# experiment 42 with synthetic exposures (scripts/seed-demo.sh), refreshes its snapshot through
# `cargo lambda invoke`, and shows the answer, a summary with the health findings, the metrics
# line the refresh wrote and the stored PostgreSQL row.
# Rerunnable; the servers stay up (scripts/servers.sh stop), the emulator is always stopped.
# Settings: DEMO_PORT (19301), CARGO_TARGET_DIR (target), DEMO_IDENTITIES (20000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PORT=${DEMO_PORT:-19301}
# The same target dir as the tests, so a demo after a test run (or the reverse) builds nothing twice.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
LOG=$CARGO_TARGET_DIR/demo-watch.log
WATCH_PGID=

step() { printf '\n== %s\n' "$*"; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }
invoke() {
    cargo lambda invoke --invoke-address 127.0.0.1 --invoke-port "$PORT" \
        --data-file "$1" --output-format json </dev/null
}
# Stops the emulator's process group (on SIGTERM it stops the function instance it spawned
# in a group of its own), then KILL after 10 s; reports a failure.
cleanup() {
    local rc=$? i
    if [ -n "$WATCH_PGID" ]; then
        kill -TERM -- "-$WATCH_PGID" 2>/dev/null || true
        for i in $(seq 1 50); do kill -0 -- "-$WATCH_PGID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL -- "-$WATCH_PGID" 2>/dev/null || true
        wait "$WATCH_PGID" 2>/dev/null || true
    fi
    if [ "$rc" -ne 0 ]; then
        echo "demo.sh: FAILED (exit $rc); the function's log is $LOG" >&2
        [ -s "$LOG" ] && tail -n 20 "$LOG" | cut -c1-300 >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "tools and servers"
source scripts/tools.sh
scripts/servers.sh start
eval "$(scripts/servers.sh env)"
export CLICKHOUSE_DATABASE=exposures_demo EXPOSURES_EVENTS_TABLE=events
export EXPOSURES_EXPERIMENTS_RELATION=experiments RUST_LOG=${RUST_LOG:-info}

step "build (first run compiles every dependency)"
! listening || { echo "demo.sh: port $PORT is already in use (set DEMO_PORT)" >&2; exit 1; }
cargo build --bin exposures </dev/null

step "cargo lambda watch on 127.0.0.1:$PORT (log: $LOG)"
mkdir -p "$CARGO_TARGET_DIR"
set -m   # the emulator gets its own process group, for cleanup
cargo lambda watch --ignore-changes --timeout 60 \
    --invoke-address 127.0.0.1 --invoke-port "$PORT" </dev/null >"$LOG" 2>&1 &
WATCH_PGID=$!
set +m
for _ in $(seq 1 600); do
    listening && break
    kill -0 "$WATCH_PGID" 2>/dev/null || { echo "demo.sh: cargo lambda watch exited" >&2; exit 1; }
    sleep 0.2
done
listening || { echo "demo.sh: nothing listens on port $PORT after 120 s" >&2; exit 1; }

step "migrate: events/migrate.json"
invoke events/migrate.json | python3 -m json.tool

step "seed: scripts/seed-demo.sh"
scripts/seed-demo.sh

step "refresh: events/refresh.json"
ANSWER=$(invoke events/refresh.json)
python3 -m json.tool <<<"$ANSWER"

step "summary"
python3 - "$ANSWER" <<'PY'
import json, sys
answer = json.loads(sys.argv[1])
snapshot = answer["exposures"]
payload = snapshot["payload"]
series = payload["timeseries"]
totals = {}
for point in series["points"]:
    for variant, n in point["new_identities"].items():
        totals[variant] = totals.get(variant, 0) + n
print(f"experiment {answer['experiment_id']}: {answer['outcome']}, as of {snapshot['as_of']}")
for variant, n in sorted(totals.items()):
    print(f"  {variant:<12}{n:>7} identities")
print(f"  {'excluded':<12}{payload['excluded_identities']:>7} (exposed to more than one variant)")
points = series["points"]
span = f", {points[0]['bucket']} .. {points[-1]['bucket']}" if points else ""
print(f"  granularity {series['granularity']}, {len(points)} points{span}")
ratio, multiple = snapshot["health"]["sample_ratio"], snapshot["health"]["multiple_exposure"]
tested = f"chi-squared {ratio['chi_squared']:.3f}, p-value {ratio['p_value']:.3g}" if ratio["p_value"] is not None else ratio["reason"]
print(f"  health: sample ratio {ratio['status']} ({tested}); multiple exposure share {multiple['share']:.4f}, warning {multiple['warning']}")
sequential = ratio["sequential"]
if sequential is not None:
    onset = sequential["onset_bucket"] or "none"
    print(f"  sequential test: {sequential['status']}, p-value {sequential['p_value']:.3g}, onset bucket {onset}")
findings = snapshot["health"]["findings"]
print(f"  findings: {len(findings) if findings else 'none'}")
for f in findings:
    print(f"    {f['severity']:<8} {f['code']:<20} since {f['since'] or '-'}: {f['detail']}")
PY

step "metrics: the refresh's Embedded Metric Format line on the function's stdout"
grep -F '"_aws"' "$LOG" | tail -n 1 | python3 -m json.tool

step "stored row in PostgreSQL"
PGTZ=UTC psql "$DATABASE_URL" -X -v ON_ERROR_STOP=1 -P pager=off -x -P format=unaligned \
    -P fieldsep=': ' -P null='(null)' -c "SELECT experiment_id, as_of, last_error_at,
    jsonb_pretty(payload) AS payload FROM experiment_exposures WHERE experiment_id = 42"
