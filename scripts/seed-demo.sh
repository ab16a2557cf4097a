#!/usr/bin/env bash
# Seeds the demo data (idempotent; scripts/demo.sh runs it, and it can be rerun on its own).
#
#   ClickHouse: database exposures_demo, table `events` dropped and recreated from
#     migrations/clickhouse/events_clickhouse_18.sql, then filled INSIDE ClickHouse from
#     numbers(): experiment 42 = flag `new-checkout` in `production`, started 5 days ago,
#     ~20k identities split control / variant_a by hash, 1 to 6 exposures each (duplicates),
#     ~1% also exposed to the other variant, plus rows the refresh must ignore:
#     anonymous exposures, other events, another flag, another environment, pre-start rows.
#   PostgreSQL: upserts experiment 42 (running, same started_at) and deletes its snapshot.
#
# Needs the servers (scripts/servers.sh start) and the PostgreSQL tables ({"action":"migrate"},
# which scripts/demo.sh invokes first). Settings: DATABASE_URL (default: the private server),
# EXPOSURES_CH_TCP_PORT (19000), DEMO_IDENTITIES (20000).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

N=${DEMO_IDENTITIES:-20000}
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "seed-demo.sh: DEMO_IDENTITIES must be a positive integer" >&2; exit 2; }
PG_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:${EXPOSURES_PG_PORT:-15432}/postgres}
NOW=$(date +%s)
START=$((NOW - 5 * 86400))   # epoch seconds: the same instant in ClickHouse and PostgreSQL
SPAN=$((NOW - START))         # exposures fall in [START, NOW)

ch() { clickhouse-client --host 127.0.0.1 --port "${EXPOSURES_CH_TCP_PORT:-19000}" "$@"; }
psql_demo() { psql "$PG_URL" -X -q -v ON_ERROR_STOP=1 "$@"; }

psql_demo -Atc "SELECT to_regclass('experiments') IS NOT NULL AND to_regclass('experiment_exposures') IS NOT NULL" |
    grep -qx t || { echo "seed-demo.sh: PostgreSQL tables missing: invoke events/migrate.json first (scripts/demo.sh does)" >&2; exit 1; }

ch --multiquery --query "CREATE DATABASE IF NOT EXISTS exposures_demo; DROP TABLE IF EXISTS exposures_demo.events"
ch --database exposures_demo --multiquery <migrations/clickhouse/events_clickhouse_18.sql

# toDateTime(<epoch seconds>) stores that instant whatever the server time zone (Asia/Kolkata).
# Hashes instead of rand(): the same identities and variants on every run.
ch --database exposures_demo --multiquery <<SQL
INSERT INTO events (environment_key, event, feature_name, identifier, value, timestamp)
SELECT 'production', '\$flag_exposure', 'new-checkout', id,
       if(cityHash64(id) % 2 = 0, 'control', 'variant_a'),
       toDateTime($START + cityHash64(number, 'time') % $SPAN)
FROM (SELECT number, concat('user-', toString(intDiv(number, 6))) AS id FROM numbers($N * 6))
WHERE number % 6 <= cityHash64(id, 'repeats') % 6;

INSERT INTO events (environment_key, event, feature_name, identifier, value, timestamp)
SELECT 'production', '\$flag_exposure', 'new-checkout', id,
       if(cityHash64(id) % 2 = 0, 'variant_a', 'control'),
       toDateTime($START + cityHash64(id, 'cross-time') % $SPAN)
FROM (SELECT concat('user-', toString(number)) AS id FROM numbers($N))
WHERE cityHash64(id, 'cross') % 100 = 0;

INSERT INTO events (environment_key, event, feature_name, identifier, value, timestamp)
SELECT if(k = 3, 'staging', 'production'),
       if(k = 1, 'checkout_completed', '\$flag_exposure'),
       if(k = 2, 'dark-mode', 'new-checkout'),
       if(k = 0, '', concat('user-', toString(cityHash64(number, 'noise-id') % $N))),
       multiIf(k = 0, 'variant_a', k = 1, '', k = 2, 'on', k = 3, 'variant_b', 'qa-preview'),
       if(k = 4, toDateTime($START - 1 - cityHash64(number, 'noise-time') % 172800),
                 toDateTime($START + cityHash64(number, 'noise-time') % $SPAN))
FROM (SELECT number, number % 5 AS k FROM numbers(10000));
SQL
# k: 0 anonymous, 1 other event, 2 other flag, 3 other environment, 4 before the start.

echo "seed-demo.sh: ClickHouse exposures_demo.events: $(ch --database exposures_demo --query "
    SELECT concat(toString(count()), ' rows, ',
                  toString(countIf(event = '\$flag_exposure' AND environment_key = 'production'
                           AND feature_name = 'new-checkout' AND identifier != ''
                           AND timestamp >= toDateTime($START))), ' counted exposures')
    FROM events")"

psql_demo -o /dev/null <<SQL
INSERT INTO experiments (id, environment_key, feature_name, status, started_at, ended_at, variant_weights)
VALUES (42, 'production', 'new-checkout', 'running', to_timestamp($START), NULL,
        '{"control": 50, "variant_a": 50}')
ON CONFLICT (id) DO UPDATE SET environment_key = EXCLUDED.environment_key,
    feature_name = EXCLUDED.feature_name, status = EXCLUDED.status,
    started_at = EXCLUDED.started_at, ended_at = NULL, variant_weights = EXCLUDED.variant_weights;
-- keep the identity sequence past the explicit id
SELECT setval(pg_get_serial_sequence('experiments', 'id'), (SELECT max(id) FROM experiments));
DELETE FROM experiment_exposures WHERE experiment_id = 42;
SQL
echo "seed-demo.sh: PostgreSQL experiment 42 running since $(date -u -d "@$START" +%Y-%m-%dT%H:%M:%SZ), no snapshot"
