#!/usr/bin/env bash
# Private ClickHouse + PostgreSQL servers on 127.0.0.1 for the tests and the demo.
#
#   scripts/servers.sh start    install if missing (apt), start both; no-op if already healthy
#   scripts/servers.sh stop     stop both (fine if not running), and scripts/cluster.sh's cluster
#   scripts/servers.sh status   show what is running (exit 1 if either is down)
#   eval "$(scripts/servers.sh env)"   exports CLICKHOUSE_URL and DATABASE_URL
#
# For the fault tests (tests/it/faults.rs, tls.rs) it also runs, from the same `start`:
# - a throwaway CA and a server certificate for localhost / 127.0.0.1 (openssl), in <state>/tls;
# - ClickHouse's https_port with that certificate, and a user `exposures_secret` with a password;
# - a second PostgreSQL with TLS on (`ssl = on`, scram passwords for TCP logins except `postgres`);
# and on demand, for tests that kill or restart a server (never the shared ones):
#   scripts/servers.sh victim-start     a second ClickHouse, to be SIGKILLed mid-query
#   scripts/servers.sh pg-tls-restart   restarts the TLS PostgreSQL (fast shutdown)
#
# Settings (env): EXPOSURES_STATE_DIR (default <repo>/target/servers), EXPOSURES_CH_HTTP_PORT (18123),
# EXPOSURES_CH_TCP_PORT (19000), EXPOSURES_CH_HTTPS_PORT (18443), EXPOSURES_CH_TZ (Asia/Kolkata;
# deliberately not UTC), EXPOSURES_PG_PORT (15432), EXPOSURES_PG_TLS_PORT (15433),
# EXPOSURES_CH_VICTIM_HTTP_PORT (18124), EXPOSURES_CH_VICTIM_TCP_PORT (19001).
# Must run as root: the servers run as the users clickhouse / postgres.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${EXPOSURES_STATE_DIR:-$REPO/target/servers}
CH_TZ=${EXPOSURES_CH_TZ:-Asia/Kolkata}
PG_PORT=${EXPOSURES_PG_PORT:-15432}
PG_TLS_PORT=${EXPOSURES_PG_TLS_PORT:-15433}
PG_DIR=$STATE/postgres
PG_TLS_DIR=$STATE/postgres-tls
TLS_DIR=$STATE/tls
# Throwaway credentials of the test servers (the leak tests look for them in every output).
CH_SECRET_PASSWORD=ch-Secret-7f3a9
PG_SECRET_PASSWORD=pg-Secret-41c8e

# Selects the ClickHouse instance the ch_* functions work on: `main` or `victim`.
ch_instance() {
    case "$1" in
        main) CH_DIR=$STATE/clickhouse CH_HTTP=${EXPOSURES_CH_HTTP_PORT:-18123}
              CH_TCP=${EXPOSURES_CH_TCP_PORT:-19000} CH_HTTPS=${EXPOSURES_CH_HTTPS_PORT:-18443} ;;
        victim) CH_DIR=$STATE/clickhouse-victim CH_HTTP=${EXPOSURES_CH_VICTIM_HTTP_PORT:-18124}
              CH_TCP=${EXPOSURES_CH_VICTIM_TCP_PORT:-19001} CH_HTTPS= ;;
    esac
    CH_PID=$CH_DIR/clickhouse-server.pid
}
ch_instance main

log() { echo "servers.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }

install_missing() {
    local pkgs=()
    command -v clickhouse-server >/dev/null || pkgs+=(clickhouse-server clickhouse-client)
    [ -n "$(pg_bin)" ] && [ -x "$(pg_bin)/initdb" ] || pkgs+=(postgresql)
    command -v curl >/dev/null || pkgs+=(curl)
    command -v openssl >/dev/null || pkgs+=(openssl)
    [ ${#pkgs[@]} -eq 0 ] && return 0
    log "installing ${pkgs[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" </dev/null
}

# The server users must be able to reach the state dir through every parent directory.
prepare_dirs() {
    mkdir -p "$STATE/clickhouse" "$STATE/clickhouse-victim" "$PG_DIR" "$PG_TLS_DIR"
    chmod 755 "$STATE"
    local d; d=$(dirname "$STATE")
    while [ "$d" != / ]; do
        [ -n "$(find "$d" -maxdepth 0 -perm -o=x)" ] ||
            die "$d is not world-executable; the clickhouse/postgres users cannot reach $STATE (set EXPOSURES_STATE_DIR)"
        d=$(dirname "$d")
    done
    chown clickhouse:clickhouse "$STATE/clickhouse" "$STATE/clickhouse-victim"
    chown postgres:postgres "$PG_DIR" "$PG_TLS_DIR"
}

# A throwaway CA, a server certificate it signs (localhost, 127.0.0.1), and an unrelated
# CA (the "wrong CA" of the tests). Made once; the servers read copies owned by their users.
tls_files() {
    [ -s "$TLS_DIR/server.crt" ] && [ -s "$TLS_DIR/other-ca.crt" ] && return 0
    mkdir -p "$TLS_DIR"
    local o="$TLS_DIR"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=exposures test CA" \
        -keyout "$o/ca.key" -out "$o/ca.crt" 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=unrelated test CA" \
        -keyout "$o/other-ca.key" -out "$o/other-ca.crt" 2>/dev/null
    openssl req -new -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$o/server.key" -out "$o/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$o/server.ext"
    openssl x509 -req -in "$o/server.csr" -CA "$o/ca.crt" -CAkey "$o/ca.key" -CAcreateserial \
        -days 3650 -extfile "$o/server.ext" -out "$o/server.crt" 2>/dev/null
    chmod 644 "$o"/*.crt
    log "throwaway CA and server certificate in $o"
}

ch_healthy() { [ "$(curl -fsS -m 2 "http://127.0.0.1:$CH_HTTP/ping" 2>/dev/null)" = "Ok." ]; }
ch_pid() { [ -s "$CH_PID" ] && kill -0 "$(cat "$CH_PID")" 2>/dev/null && cat "$CH_PID"; }

# Copy Debian's config and edit the copy with sed (exact values, so the ZooKeeper DDL <path> stays untouched).
ch_config() {
    local c=$CH_DIR/config.xml
    cp /etc/clickhouse-server/config.xml "$c"
    cp /etc/clickhouse-server/users.xml "$CH_DIR/users.xml"
    cp "$TLS_DIR/server.crt" "$TLS_DIR/server.key" "$CH_DIR/"
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
        -e "s|<certificateFile>.*</certificateFile>|<certificateFile>$CH_DIR/server.crt</certificateFile>|" \
        -e "s|<privateKeyFile>.*</privateKeyFile>|<privateKeyFile>$CH_DIR/server.key</privateKeyFile>|" \
        -e "/<dhParamsFile>/d" \
        "$c"
    [ -z "$CH_HTTPS" ] || sed -i "s|<http_port>$CH_HTTP</http_port>|&\n    <https_port>$CH_HTTPS</https_port>|" "$c"
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
        -e "s|</users>|    <exposures_secret><password>$CH_SECRET_PASSWORD</password><networks><ip>::1</ip><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></exposures_secret>\n    </users>|" \
        "$CH_DIR/users.xml"
    grep -q "<timezone>$CH_TZ</timezone>" "$c" && grep -q "<exposures_two_shards>" "$c" &&
        ! grep -q '/var/lib/clickhouse/<\|/var/log/' "$c" ||
        die "editing $c failed (unexpected layout of /etc/clickhouse-server/config.xml)"
    chown clickhouse:clickhouse "$c" "$CH_DIR/users.xml" "$CH_DIR/server.crt" "$CH_DIR/server.key"
    chmod 600 "$CH_DIR/server.key"
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
        ch_healthy && { log "clickhouse up on :$CH_HTTP (tcp :$CH_TCP, https :${CH_HTTPS:--}, tz $CH_TZ)"; return 0; }
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
pg_healthy() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "${1:-$PG_PORT}"; }

# pg_start DIR PORT [tls]: the tls cluster serves the throwaway certificate and asks every
# TCP login but `postgres` for a scram password (role exposures_secret).
pg_start() {
    local dir=$1 port=$2 tls=${3:-} extra=""
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        pg initdb -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log"
        if [ -n "$tls" ]; then
            printf 'local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n' \
                >"$dir/data/pg_hba.conf"
        fi
    fi
    if [ -n "$tls" ]; then
        install -o postgres -g postgres -m 600 "$TLS_DIR/server.key" "$dir/server.key"
        install -o postgres -g postgres -m 644 "$TLS_DIR/server.crt" "$dir/server.crt"
        extra="-c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key"
    fi
    if pg pg_ctl -D "$dir/data" status >/dev/null 2>&1 && pg_healthy "$port"; then
        log "postgres already running on :$port"; return 0
    fi
    runuser -u postgres -- mkdir -p "$dir/sock"
    pg pg_ctl -D "$dir/data" -l "$dir/postgres.log" -t 60 -w start -o \
        "-p $port -k $dir/sock -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off $extra" \
        >/dev/null || { tail -n 40 "$dir/postgres.log" >&2; die "postgres failed to start"; }
    pg_healthy "$port" || die "postgres started but pg_isready fails on :$port"
    if [ -n "$tls" ]; then
        pg psql -q -h "$dir/sock" -p "$port" -d postgres -c \
            "DO \$\$ BEGIN CREATE ROLE exposures_secret LOGIN SUPERUSER; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$;
             ALTER ROLE exposures_secret PASSWORD '$PG_SECRET_PASSWORD'" >/dev/null
    fi
    log "postgres up on :$port${tls:+ (TLS on)}"
}

pg_stop() {
    local dir=$1
    [ -f "$dir/data/PG_VERSION" ] || return 0
    if pg pg_ctl -D "$dir/data" status >/dev/null 2>&1; then
        pg pg_ctl -D "$dir/data" -m fast -w stop >/dev/null; log "postgres stopped ($dir)"
    fi
}

status() {
    local rc=0
    if ch_healthy; then echo "clickhouse: running on :$CH_HTTP (pid $(ch_pid || echo '?'))"; else echo "clickhouse: down"; rc=1; fi
    if pg_healthy 2>/dev/null; then echo "postgres:   running on :$PG_PORT"; else echo "postgres:   down"; rc=1; fi
    if pg_healthy "$PG_TLS_PORT" 2>/dev/null; then echo "postgres (TLS): running on :$PG_TLS_PORT"; else echo "postgres (TLS): down"; rc=1; fi
    echo "state dir:  $STATE"
    return $rc
}

case "${1:-}" in
    start) [ "$(id -u)" -eq 0 ] || die "run as root"; install_missing; prepare_dirs; tls_files
           ch_start; pg_start "$PG_DIR" "$PG_PORT"; pg_start "$PG_TLS_DIR" "$PG_TLS_PORT" tls ;;
    # The test cluster (scripts/cluster.sh) is started by test.sh next to these servers;
    # one `stop` ends everything the tests left running.
    stop) ch_stop; ch_instance victim; ch_stop; pg_stop "$PG_DIR"; pg_stop "$PG_TLS_DIR"
          "$REPO/scripts/cluster.sh" stop ;;
    victim-start) [ "$(id -u)" -eq 0 ] || die "run as root"; install_missing; prepare_dirs; tls_files
           ch_instance victim; ch_start ;;
    pg-tls-restart) pg_stop "$PG_TLS_DIR"; pg_start "$PG_TLS_DIR" "$PG_TLS_PORT" tls ;;
    status) status ;;
    env)
        echo "export CLICKHOUSE_URL=http://127.0.0.1:$CH_HTTP"
        echo "export DATABASE_URL=postgres://postgres@127.0.0.1:$PG_PORT/postgres" ;;
    *) echo "usage: $0 {start|stop|status|env|victim-start|pg-tls-restart}" >&2; exit 2 ;;
esac
