#!/usr/bin/env bash
# Private ClickHouse + PostgreSQL servers on 127.0.0.1 for the tests and the demo.
#
#   scripts/servers.sh start    install if missing (apt), start both; no-op if already healthy
#   scripts/servers.sh stop     stop both (fine if not running)
#   scripts/servers.sh status   show what is running (exit 1 if either is down)
#   eval "$(scripts/servers.sh env)"   exports CLICKHOUSE_URL and DATABASE_URL
#
# Settings (env): EXPOSURES_STATE_DIR (default <repo>/target/servers), EXPOSURES_CH_HTTP_PORT (18123),
# EXPOSURES_CH_TCP_PORT (19000), EXPOSURES_CH_TZ (Asia/Kolkata; deliberately not UTC),
# EXPOSURES_PG_PORT (15432). Must run as root: the servers run as the users clickhouse / postgres.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${EXPOSURES_STATE_DIR:-$REPO/target/servers}
CH_HTTP=${EXPOSURES_CH_HTTP_PORT:-18123}
CH_TCP=${EXPOSURES_CH_TCP_PORT:-19000}
CH_TZ=${EXPOSURES_CH_TZ:-Asia/Kolkata}
PG_PORT=${EXPOSURES_PG_PORT:-15432}
CH_DIR=$STATE/clickhouse
PG_DIR=$STATE/postgres
CH_PID=$CH_DIR/clickhouse-server.pid

log() { echo "servers.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }

install_missing() {
    local pkgs=()
    command -v clickhouse-server >/dev/null || pkgs+=(clickhouse-server clickhouse-client)
    [ -n "$(pg_bin)" ] && [ -x "$(pg_bin)/initdb" ] || pkgs+=(postgresql)
    command -v curl >/dev/null || pkgs+=(curl)
    [ ${#pkgs[@]} -eq 0 ] && return 0
    log "installing ${pkgs[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" </dev/null
}

# The server users must be able to reach the state dir through every parent directory.
prepare_dirs() {
    mkdir -p "$CH_DIR" "$PG_DIR"
    chmod 755 "$STATE"
    local d; d=$(dirname "$STATE")
    while [ "$d" != / ]; do
        [ -n "$(find "$d" -maxdepth 0 -perm -o=x)" ] ||
            die "$d is not world-executable; the clickhouse/postgres users cannot reach $STATE (set EXPOSURES_STATE_DIR)"
        d=$(dirname "$d")
    done
    chown clickhouse:clickhouse "$CH_DIR"
    chown postgres:postgres "$PG_DIR"
}

ch_healthy() { [ "$(curl -fsS -m 2 "http://127.0.0.1:$CH_HTTP/ping" 2>/dev/null)" = "Ok." ]; }
ch_pid() { [ -s "$CH_PID" ] && kill -0 "$(cat "$CH_PID")" 2>/dev/null && cat "$CH_PID"; }

# Copy Debian's config and edit the copy with sed (exact values, so the ZooKeeper DDL <path> stays untouched).
ch_config() {
    local c=$CH_DIR/config.xml
    cp /etc/clickhouse-server/config.xml "$c"
    cp /etc/clickhouse-server/users.xml "$CH_DIR/users.xml"
    sed -i \
        -e "s|<log>.*</log>|<log>$CH_DIR/log/clickhouse-server.log</log>|" \
        -e "s|<errorlog>.*</errorlog>|<errorlog>$CH_DIR/log/clickhouse-server.err.log</errorlog>|" \
        -e "s|<http_port>.*</http_port>|<http_port>$CH_HTTP</http_port>|" \
        -e "s|<tcp_port>.*</tcp_port>|<tcp_port>$CH_TCP</tcp_port>\n    <listen_host>127.0.0.1</listen_host>|" \
        -e "/<interserver_http_port>/d" \
        -e "s|<path>/var/lib/clickhouse/</path>|<path>$CH_DIR/data/</path>|" \
        -e "s|<tmp_path>.*</tmp_path>|<tmp_path>$CH_DIR/tmp/</tmp_path>|" \
        -e "s|<user_files_path>.*</user_files_path>|<user_files_path>$CH_DIR/user_files/</user_files_path>|" \
        -e "s|<format_schema_path>.*</format_schema_path>|<format_schema_path>$CH_DIR/format_schemas/</format_schema_path>|" \
        -e "s|<!-- <timezone>.*</timezone> -->|<timezone>$CH_TZ</timezone>|" \
        -e "s|<mark_cache_size>.*</mark_cache_size>|<mark_cache_size>268435456</mark_cache_size>|" \
        "$c"
    # Cluster `exposures_two_shards` (SPEC 8): two shards on this server, one database each,
    # so a `Distributed(exposures_two_shards, '', table)` splits rows between them.
    local shards="" db
    for db in exposures_shard_a exposures_shard_b; do
        shards+="<shard><replica><host>127.0.0.1</host><port>$CH_TCP</port><default_database>$db</default_database></replica></shard>"
    done
    sed -i "s|</remote_servers>|    <exposures_two_shards>$shards</exposures_two_shards>\n    </remote_servers>|" "$c"
    # default user: empty password, loopback only. User `limited` reads at most 20000
    # rows per query: the tests use it to make one experiment's query fail for real.
    sed -i \
        -e "s|<ip>::/0</ip>|<ip>::1</ip><ip>127.0.0.1</ip>|" \
        -e "s|</profiles>|    <limited><max_rows_to_read>20000</max_rows_to_read></limited>\n    </profiles>|" \
        -e "s|</users>|    <limited><password></password><networks><ip>::1</ip><ip>127.0.0.1</ip></networks><profile>limited</profile><quota>default</quota></limited>\n    </users>|" \
        "$CH_DIR/users.xml"
    grep -q "<timezone>$CH_TZ</timezone>" "$c" && grep -q "<exposures_two_shards>" "$c" &&
        ! grep -q '/var/lib/clickhouse/<\|/var/log/' "$c" ||
        die "editing $c failed (unexpected layout of /etc/clickhouse-server/config.xml)"
    chown clickhouse:clickhouse "$c" "$CH_DIR/users.xml"
}

ch_start() {
    if ch_healthy; then
        [ -n "$(ch_pid || true)" ] || die "port $CH_HTTP answers but is not our ClickHouse ($CH_PID)"
        log "clickhouse already running (pid $(ch_pid))"; return 0
    fi
    [ -z "$(ch_pid || true)" ] || ch_stop
    rm -f "$CH_PID"
    ch_config
    runuser -u clickhouse -- mkdir -p "$CH_DIR/log" "$CH_DIR/data" "$CH_DIR/tmp"
    (cd "$CH_DIR" && runuser -u clickhouse -- /usr/sbin/clickhouse-server --daemon \
        --config-file="$CH_DIR/config.xml" --pid-file="$CH_PID" </dev/null >/dev/null 2>&1)
    local i
    for i in $(seq 1 120); do
        ch_healthy && { log "clickhouse up on :$CH_HTTP (tcp :$CH_TCP, tz $CH_TZ)"; return 0; }
        [ "$i" -lt 4 ] || [ -n "$(ch_pid || true)" ] || break   # daemon already exited
        sleep 0.5
    done
    log "clickhouse did not answer /ping (exited, or 60 s timeout); log tail:"
    tail -n 40 "$CH_DIR/log/clickhouse-server.err.log" "$CH_DIR/log/clickhouse-server.log" >&2 2>/dev/null || true
    exit 1
}

ch_stop() {
    local pid i; pid=$(ch_pid || true)
    [ -n "$pid" ] || { rm -f "$CH_PID"; return 0; }
    kill "$pid"
    for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then log "clickhouse ignored SIGTERM; killing"; kill -9 "$pid"; fi
    rm -f "$CH_PID"; log "clickhouse stopped"
}

pg() { local b; b=$(pg_bin); runuser -u postgres -- "$b/$1" "${@:2}"; }
pg_healthy() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT"; }

pg_start() {
    [ -f "$PG_DIR/data/PG_VERSION" ] ||
        pg initdb -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log"
    if pg pg_ctl -D "$PG_DIR/data" status >/dev/null 2>&1 && pg_healthy; then
        log "postgres already running"; return 0
    fi
    runuser -u postgres -- mkdir -p "$PG_DIR/sock"
    pg pg_ctl -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -t 60 -w start -o \
        "-p $PG_PORT -k $PG_DIR/sock -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" \
        >/dev/null || { tail -n 40 "$PG_DIR/postgres.log" >&2; die "postgres failed to start"; }
    pg_healthy || die "postgres started but pg_isready fails on :$PG_PORT"
    log "postgres up on :$PG_PORT"
}

pg_stop() {
    [ -f "$PG_DIR/data/PG_VERSION" ] || return 0
    if pg pg_ctl -D "$PG_DIR/data" status >/dev/null 2>&1; then
        pg pg_ctl -D "$PG_DIR/data" -m fast -w stop >/dev/null; log "postgres stopped"
    fi
}

status() {
    local rc=0
    if ch_healthy; then echo "clickhouse: running on :$CH_HTTP (pid $(ch_pid || echo '?'))"; else echo "clickhouse: down"; rc=1; fi
    if pg_healthy 2>/dev/null; then echo "postgres:   running on :$PG_PORT"; else echo "postgres:   down"; rc=1; fi
    echo "state dir:  $STATE"
    return $rc
}

case "${1:-}" in
    start) [ "$(id -u)" -eq 0 ] || die "run as root"; install_missing; prepare_dirs; ch_start; pg_start ;;
    stop) ch_stop; pg_stop ;;
    status) status ;;
    env)
        echo "export CLICKHOUSE_URL=http://127.0.0.1:$CH_HTTP"
        echo "export DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres" ;;
    *) echo "usage: $0 {start|stop|status|env}" >&2; exit 2 ;;
esac
