#!/usr/bin/env bash
# A real ClickHouse cluster on 127.0.0.1 for the tests: 2 shards x 2 replicas of Debian's
# clickhouse-server (18.16) as four separate processes, plus one ZooKeeper (Debian's jars,
# run as a plain Java process: the `zookeeperd` service needs systemd).
#
#   scripts/cluster.sh start           install if missing (apt), start ZooKeeper and the 4 nodes,
#                                      wait until the cluster works; no-op if already healthy
#   scripts/cluster.sh stop            stop the nodes and ZooKeeper (fine if not running)
#   scripts/cluster.sh status          show what is running (exit 1 if anything is down)
#   eval "$(scripts/cluster.sh env)"   exports EXPOSURES_TEST_CLUSTER_URL (node 1) and
#                                      EXPOSURES_TEST_CLUSTER_NODE{1..4}_URL, ..._PID_FILE
#   scripts/cluster.sh kill N          SIGKILL node N (a crash, for fault tests)
#   scripts/cluster.sh restart N       (re)start node N; waits until it answers and its
#                                      replicated tables are writable again
#   scripts/cluster.sh sql N 'QUERY'   run a query on node N over HTTP (stdin if QUERY omitted)
#   scripts/cluster.sh profile SETTING VALUE   set SETTING in the default profile on all nodes
#   scripts/cluster.sh profile --reset         drop every such override
#                                      (both wait until all nodes report the new value)
#   scripts/cluster.sh verify          self-test: replicated + Distributed events table, 10000 rows
#
# Layout: cluster `exposures_cluster`, internal_replication on.
#   node1 = shard 1 replica node1   node2 = shard 1 replica node2
#   node3 = shard 2 replica node3   node4 = shard 2 replica node4
# macros: {shard} = 1|2, {replica} = node1..node4 (unique, so logs and system.replicas say which node).
# Default profile: log_queries=1 (tests read system.query_log).
#
# Settings (env): EXPOSURES_STATE_DIR (default <repo>/target/servers; the cluster lives in
# <state>/cluster), EXPOSURES_CLUSTER_HTTP_BASE (18200: node N serves HTTP on base+N),
# EXPOSURES_CLUSTER_TCP_BASE (19200), EXPOSURES_CLUSTER_INTERSERVER_BASE (19400; demo.sh uses 19301),
# EXPOSURES_CLUSTER_ZK_PORT (12181), EXPOSURES_CH_TZ (Asia/Kolkata, as servers.sh).
# Must run as root (apt, and the servers run as the users clickhouse / zookeeper).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${EXPOSURES_STATE_DIR:-$REPO/target/servers}
DIR=$STATE/cluster
CH_TZ=${EXPOSURES_CH_TZ:-Asia/Kolkata}
HTTP_BASE=${EXPOSURES_CLUSTER_HTTP_BASE:-18200}
TCP_BASE=${EXPOSURES_CLUSTER_TCP_BASE:-19200}
INTERSERVER_BASE=${EXPOSURES_CLUSTER_INTERSERVER_BASE:-19400}
ZK_PORT=${EXPOSURES_CLUSTER_ZK_PORT:-12181}
ZK_DIR=$DIR/zookeeper
ZK_PID=$ZK_DIR/zookeeper.pid
CLUSTER=exposures_cluster
NODES=(1 2 3 4)
# Low, so that a SIGKILLed replica's ephemeral "is_active" znode goes away quickly: until its
# old session expires, the restarted replica cannot activate and its tables stay read-only.
ZK_SESSION_TIMEOUT_MS=6000
# Debian's slf4j binding that logs to stderr (the zookeeper jar's manifest brings slf4j-api).
ZK_CLASSPATH=/usr/share/java/zookeeper.jar:/usr/share/java/slf4j-simple.jar
START_ATTEMPTS=3

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
# A killed server stays a zombie until PID 1 reaps it, which can take seconds in a container
# (kill -0 still succeeds then): count a zombie as dead.
alive() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $st != Z* ]]; }
need_root() { [ "$(id -u)" -eq 0 ] || die "run as root"; }

node_dir() { echo "$DIR/node$1"; }
http_port() { echo $((HTTP_BASE + $1)); }
tcp_port() { echo $((TCP_BASE + $1)); }
interserver_port() { echo $((INTERSERVER_BASE + $1)); }
shard_of() { echo $(( ($1 + 1) / 2 )); }
node_pidfile() { echo "$(node_dir "$1")/clickhouse-server.pid"; }
node_url() { echo "http://127.0.0.1:$(http_port "$1")"; }

check_node_arg() {
    case "${1:-}" in 1|2|3|4) ;; *) die "expected a node number 1-4, got '${1:-}'" ;; esac
}

install_missing() {
    local pkgs=()
    command -v clickhouse-server >/dev/null || pkgs+=(clickhouse-server clickhouse-client)
    [ -f /usr/share/java/zookeeper.jar ] || pkgs+=(zookeeper)
    # zookeeper depends on libslf4j-java, but say so: the binding is on our classpath.
    [ -f /usr/share/java/slf4j-simple.jar ] || pkgs+=(libslf4j-java)
    command -v java >/dev/null || pkgs+=(default-jre-headless)
    command -v curl >/dev/null || pkgs+=(curl)
    command -v ps >/dev/null || pkgs+=(procps)
    [ ${#pkgs[@]} -eq 0 ] && return 0
    log "installing ${pkgs[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" </dev/null
}

# The server users must be able to reach the state dir through every parent directory.
prepare_dirs() {
    local n d
    mkdir -p "$DIR" "$ZK_DIR/data"
    chmod 755 "$STATE" "$DIR"
    d=$(dirname "$STATE")
    while [ "$d" != / ]; do
        [ -n "$(find "$d" -maxdepth 0 -perm -o=x)" ] ||
            die "$d is not world-executable; the clickhouse/zookeeper users cannot reach $STATE (set EXPOSURES_STATE_DIR)"
        d=$(dirname "$d")
    done
    chown -R zookeeper:zookeeper "$ZK_DIR"
    for n in "${NODES[@]}"; do
        d=$(node_dir "$n")
        mkdir -p "$d/users.d" "$d/log" "$d/data" "$d/tmp" "$d/user_files" "$d/format_schemas"
        chown clickhouse:clickhouse "$d" "$d/users.d" "$d/log" "$d/data" "$d/tmp" "$d/user_files" "$d/format_schemas"
    done
}

# ---------------------------------------------------------------------------- ZooKeeper

zk_pid() { [ -s "$ZK_PID" ] && alive "$(cat "$ZK_PID")" && cat "$ZK_PID"; }

# zk_cmd WORD: a four-letter-word command (only those whitelisted in zoo.cfg); /dev/tcp spares
# a netcat dependency.
zk_cmd() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf %s "$2" >&3 && cat <&3' _ "$ZK_PORT" "$1" 2>/dev/null
}

# Not `ruok`: it answers "imok" while ZooKeeper still loads its database, and a ClickHouse
# node that connects then gets "ZooKeeperServer not running" and fails to start. `srvr`
# says "not currently serving requests" until the server really serves.
zk_healthy() { zk_cmd srvr | grep -q '^Zookeeper version'; }

# Ephemeral "is_active" znodes of node N's replicas, one per line (from `dump`); fails if
# ZooKeeper did not answer (an empty answer must mean "none").
zk_active_of() {
    local dump; dump=$(zk_cmd dump) && grep -q '^Sessions with Ephemerals' <<<"$dump" || return 1
    grep -E "/replicas/node$1/is_active\$" <<<"$dump" || true
}

zk_start() {
    if zk_healthy; then
        [ -n "$(zk_pid || true)" ] || die "port $ZK_PORT answers srvr but is not our ZooKeeper ($ZK_PID)"
        log "zookeeper already running (pid $(zk_pid))"; return 0
    fi
    [ -z "$(zk_pid || true)" ] || zk_stop
    # admin.enableServer=false: otherwise its admin web server takes port 8080.
    # forceSync=no: no fsync per transaction; this is throwaway test state and DDL gets faster.
    # tickTime 1000 allows session timeouts from 2 s to 20 s (the nodes ask for 6 s).
    cat >"$ZK_DIR/zoo.cfg" <<EOF
tickTime=1000
initLimit=10
syncLimit=5
dataDir=$ZK_DIR/data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
maxClientCnxns=0
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,dump
forceSync=no
autopurge.snapRetainCount=3
autopurge.purgeInterval=1
EOF
    chown zookeeper:zookeeper "$ZK_DIR/zoo.cfg"
    # setpriv execs (runuser would stay as the parent), so $! is the JVM's pid. setsid: the
    # server must outlive this script and its caller's process group. The JVM flags trade
    # peak speed (irrelevant for a handful of clients) for a quicker start; NIOServerCnxn at
    # warn keeps our health checks' "Processing srvr command" lines out of the log.
    setsid setpriv --reuid=zookeeper --regid=zookeeper --init-groups \
        java -Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.net.preferIPv4Stack=true \
        -Dorg.slf4j.simpleLogger.showDateTime=true -Dzookeeper.log.dir="$ZK_DIR" \
        -Dorg.slf4j.simpleLogger.log.org.apache.zookeeper.server.NIOServerCnxn=warn \
        -cp "$ZK_CLASSPATH" org.apache.zookeeper.server.ZooKeeperServerMain "$ZK_DIR/zoo.cfg" \
        </dev/null >>"$ZK_DIR/zookeeper.log" 2>&1 &
    echo $! >"$ZK_PID"
    local i
    for i in $(seq 1 150); do
        zk_healthy && { log "zookeeper up on :$ZK_PORT (pid $(zk_pid))"; return 0; }
        [ -n "$(zk_pid || true)" ] || break
        sleep 0.1
    done
    log "zookeeper did not serve on :$ZK_PORT (exited, or 15 s timeout); log tail:"
    tail -n 40 "$ZK_DIR/zookeeper.log" >&2 || true
    exit 1
}

zk_stop() {
    local pid i; pid=$(zk_pid || true)
    [ -n "$pid" ] || { rm -f "$ZK_PID"; return 0; }
    kill "$pid"
    for i in $(seq 1 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then log "zookeeper ignored SIGTERM; killing"; kill -9 "$pid"; fi
    rm -f "$ZK_PID"; log "zookeeper stopped"
}

# ---------------------------------------------------------------------------- ClickHouse nodes

node_pid() { local f; f=$(node_pidfile "$1"); [ -s "$f" ] && alive "$(cat "$f")" && cat "$f"; }
node_healthy() { [ "$(curl -fsS -m 2 "$(node_url "$1")/ping" 2>/dev/null)" = "Ok." ]; }

# q N QUERY [URL-PARAMS]: the query's result on stdout; on failure ClickHouse's message on
# stderr and a non-zero exit.
q() {
    local out
    if out=$(curl -sS --fail-with-body -m "${Q_TIMEOUT:-120}" --data-binary @- \
        "$(node_url "$1")/?${3:-}" <<<"$2" 2>&1); then
        printf '%s\n' "$out"
    else
        log "node$1 query failed: ${2:0:200}"
        printf '%s\n' "$out" >&2
        return 1
    fi
}

# What node N logged since its last start, without stack frames (the error is usually near
# the end; the full log is in <node>/log).
node_log_tail() {
    local f; f=$(node_dir "$1")/log/clickhouse-server.log
    log "node$1: end of $f since its last start:"
    awk '/Starting ClickHouse/ { n = 0 } !/^[0-9]+\. / { lines[n++] = $0 }
         END { for (i = (n > 40 ? n - 40 : 0); i < n; i++) print lines[i] }' "$f" >&2 2>/dev/null || true
}

# One generated config per node (root element <yandex> in 18.16); written on each start so
# that port or layout changes apply. Replicas are addressed by TCP port on 127.0.0.1:
# a server counts a replica as itself when host is local and the port is its own tcp_port.
node_config() {
    local n=$1 d s r shards=""
    d=$(node_dir "$n")
    for s in 1 2; do
        shards+="
            <shard>
                <internal_replication>true</internal_replication>"
        for r in $((2 * s - 1)) $((2 * s)); do
            shards+="
                <replica><host>127.0.0.1</host><port>$(tcp_port "$r")</port></replica>"
        done
        shards+="
            </shard>"
    done
    cat >"$d/config.xml" <<EOF
<?xml version="1.0"?>
<!-- Generated by scripts/cluster.sh: node$n of $CLUSTER (shard $(shard_of "$n")). -->
<yandex>
    <logger>
        <level>information</level>
        <log>$d/log/clickhouse-server.log</log>
        <errorlog>$d/log/clickhouse-server.err.log</errorlog>
        <size>50M</size>
        <count>2</count>
    </logger>
    <http_port>$(http_port "$n")</http_port>
    <tcp_port>$(tcp_port "$n")</tcp_port>
    <interserver_http_port>$(interserver_port "$n")</interserver_http_port>
    <!-- Replicas fetch parts from each other at this host. -->
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>4096</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <!-- Four servers on one machine: Debian's 5 GB / 8 GB caches are far too big. -->
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <path>$d/data/</path>
    <tmp_path>$d/tmp/</tmp_path>
    <user_files_path>$d/user_files/</user_files_path>
    <format_schema_path>$d/format_schemas/</format_schema_path>
    <users_config>$d/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>$CH_TZ</timezone>
    <remote_servers>
        <$CLUSTER>$shards
        </$CLUSTER>
    </remote_servers>
    <zookeeper>
        <node><host>127.0.0.1</host><port>$ZK_PORT</port></node>
        <session_timeout_ms>$ZK_SESSION_TIMEOUT_MS</session_timeout_ms>
    </zookeeper>
    <macros>
        <shard>$(shard_of "$n")</shard>
        <replica>node$n</replica>
    </macros>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
    <query_log>
        <database>system</database>
        <table>query_log</table>
        <partition_by>toYYYYMM(event_date)</partition_by>
        <flush_interval_milliseconds>7500</flush_interval_milliseconds>
    </query_log>
    <!-- Without this section 18.16 runs no DDL worker and ON CLUSTER queries hang. -->
    <distributed_ddl>
        <path>/clickhouse/task_queue/ddl</path>
    </distributed_ddl>
</yandex>
EOF
    # The default profile as Debian ships it, plus log_queries. `profile` adds overrides in
    # users.d/ (merged into this file; the server re-reads both within about a second).
    cat >"$d/users.xml" <<'EOF'
<?xml version="1.0"?>
<!-- Generated by scripts/cluster.sh; profile overrides go to users.d/ (cluster.sh profile). -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>10000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
            <log_queries>1</log_queries>
        </default>
        <readonly>
            <readonly>1</readonly>
        </readonly>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>::1</ip><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
EOF
    chown clickhouse:clickhouse "$d/config.xml" "$d/users.xml"
}

# Launches node N's daemon (no waiting). Clears the pid file first, so a stale one cannot
# make a dead node look alive.
node_launch() {
    local n=$1 d; d=$(node_dir "$n")
    rm -f "$(node_pidfile "$n")"
    node_config "$n"
    (cd "$d" && runuser -u clickhouse -- /usr/sbin/clickhouse-server --daemon \
        --config-file="$d/config.xml" --pid-file="$(node_pidfile "$n")" </dev/null >/dev/null 2>&1)
}

# wait_ready N [SECONDS]: 0 once node N answers /ping; 1 if its daemon is gone, or on timeout.
wait_ready() {
    local n=$1 limit=${2:-60} i
    for i in $(seq 1 $((limit * 10))); do
        node_healthy "$n" && return 0
        # The pid file appears a moment after --daemon returns; absent after 1 s means exited.
        [ "$i" -lt 10 ] || [ -n "$(node_pid "$n" || true)" ] || return 1
        sleep 0.1
    done
    return 1
}

# Stops whatever runs as node N (fine if nothing does).
node_stop() {
    local n=$1 pid i; pid=$(node_pid "$n" || true)
    [ -n "$pid" ] || { rm -f "$(node_pidfile "$n")"; return 0; }
    kill "$pid"
    for i in $(seq 1 300); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then log "node$n ignored SIGTERM for 30 s; killing"; kill -9 "$pid"; fi
    rm -f "$(node_pidfile "$n")"; log "node$n stopped"
}

# A node that crashed (SIGKILL) leaves its ZooKeeper session behind, and with it the
# "is_active" znode of each of its replicas, until the session expires (session_timeout_ms).
# Started before that, its replicas fail to activate ("Replica ... appears to be already
# active") and 18.16 tries again only 10 s later; waiting for the expiry here is quicker.
wait_stale_session() {
    local n=$1 i
    local active
    for i in $(seq 1 250); do   # 25 s: more than the longest session ZooKeeper grants (20 s)
        if active=$(zk_active_of "$n"); then
            [ -n "$active" ] || return 0
            [ "$i" -gt 1 ] || log "node$n: waiting for its old ZooKeeper session to expire"
        fi
        sleep 0.1
    done
    die "node$n: its replicas are still marked active in ZooKeeper after 25 s (or it does not answer dump):
$(zk_active_of "$n" || true)"
}

# Starts the given nodes in parallel and waits for each; a node whose daemon exits before it
# answers is started again (a rare start failure, "Code: 1001", was seen with 18.16), with
# its log tail shown each time. Dies after START_ATTEMPTS.
nodes_start() {
    local n attempt pending=() failed launches
    for n in "$@"; do
        if node_healthy "$n"; then
            [ -n "$(node_pid "$n" || true)" ] || die "port $(http_port "$n") answers but is not our node$n ($(node_pidfile "$n"))"
            log "node$n already running (pid $(node_pid "$n"))"
        else
            [ -z "$(node_pid "$n" || true)" ] || node_stop "$n"
            pending+=("$n")
        fi
    done
    for n in "${pending[@]+"${pending[@]}"}"; do wait_stale_session "$n"; done
    for attempt in $(seq 1 "$START_ATTEMPTS"); do
        [ ${#pending[@]} -gt 0 ] || return 0
        # --daemon returns only after a few hundred ms: launch them side by side.
        # (Waiting on these pids only: ZooKeeper may be a child of this shell too.)
        launches=()
        for n in "${pending[@]}"; do node_launch "$n" & launches+=($!); done
        for n in "${launches[@]}"; do wait "$n"; done
        failed=()
        for n in "${pending[@]}"; do
            if wait_ready "$n" 60; then
                log "node$n up on :$(http_port "$n") (tcp :$(tcp_port "$n"), shard $(shard_of "$n"), pid $(node_pid "$n"))"
            else
                log "node$n did not answer /ping (attempt $attempt of $START_ATTEMPTS)"
                node_log_tail "$n"
                node_stop "$n"
                failed+=("$n")
            fi
        done
        pending=("${failed[@]+"${failed[@]}"}")
    done
    [ ${#pending[@]} -eq 0 ] || die "node(s) ${pending[*]} failed to start $START_ATTEMPTS times"
}

# poll SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds.
poll() {
    local limit=$1 what=$2 i; shift 2
    for i in $(seq 1 $((limit * 5))); do
        "$@" 2>/dev/null && return 0
        sleep 0.2
    done
    "$@" || true   # once more with its errors shown
    die "timed out after ${limit}s waiting for $what"
}

node_sees_cluster() { [ "$(q "$1" "SELECT count() FROM system.clusters WHERE cluster = '$CLUSTER'")" = 4 ]; }
node_sees_zk() { [ "$(q "$1" "SELECT count() > 0 FROM system.zookeeper WHERE path = '/'")" = 1 ]; }
# Every replicated table on node N is writable, has a live session, and its replica is
# active: its is_active znode exists (system.replicas' is_readonly stays 0 and
# active_replicas counts a dead session's znode while activation fails, so ask ZooKeeper).
node_replicas_ok() {
    local paths dump p tab=$'\t'
    [ "$(q "$1" "SELECT count() FROM system.replicas WHERE is_readonly OR is_session_expired")" = 0 ] || return 1
    paths=$(q "$1" "SELECT replica_path FROM system.replicas") || return 1
    [ -n "$paths" ] || return 0
    dump=$(zk_cmd dump)
    for p in $paths; do grep -qxF "$tab$p/is_active" <<<"$dump" || return 1; done
}

# Distributed DDL works end to end (ZooKeeper queue, the DDL worker of every node, replicated
# tables): what the tests rely on. One table in `default`, two DDL queries (each takes a few
# hundred ms in 18.16). A fresh ZooKeeper path each time, so nothing left by an interrupted
# check can get in the way.
cluster_check() {
    local t=default.exposures_cluster_check n
    if [ "$(q 1 "EXISTS TABLE $t")" = 1 ]; then q 1 "DROP TABLE $t ON CLUSTER $CLUSTER" >/dev/null; fi
    q 1 "CREATE TABLE $t ON CLUSTER $CLUSTER (x UInt8)
         ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/exposures_cluster_check_$(date +%s%N)', '{replica}') ORDER BY x" >/dev/null
    for n in "${NODES[@]}"; do
        node_replicas_ok "$n" ||
            { q "$n" "SELECT * FROM system.replicas FORMAT Vertical" >&2 || true; die "node$n: a replica of $t is not active"; }
    done
    q 1 "DROP TABLE $t ON CLUSTER $CLUSTER" >/dev/null
}

cluster_wait() {
    local n
    for n in "${NODES[@]}"; do
        poll 30 "node$n to list 4 replicas of $CLUSTER in system.clusters" node_sees_cluster "$n"
        poll 30 "node$n to reach ZooKeeper (system.zookeeper)" node_sees_zk "$n"
        poll 30 "node$n's replicas to be active" node_replicas_ok "$n"
    done
    cluster_check
}

# ---------------------------------------------------------------------------- profile

# One users.d file per overridden setting; the value the setting had before the first
# override is kept in profile-<setting>.orig (a running node's), so `--reset` knows what to
# wait for.
profile_file() { echo "$(node_dir "$1")/users.d/profile-$2.xml"; }
profile_orig() { echo "$DIR/profile-$1.orig"; }

setting_is() { [ "$(q "$1" "SELECT value FROM system.settings WHERE name = '$2'")" = "$3" ]; }

# Nodes that are down (killed by a test: skip_unavailable_shards is for just that) read
# users.d/ when they start again.
profile_wait() {
    local setting=$1 value=$2 n
    for n in "${NODES[@]}"; do
        if node_healthy "$n"; then
            poll 15 "node$n to report $setting = '$value'" setting_is "$n" "$setting" "$value"
        else
            log "node$n is down; it will read the profile when it starts"
        fi
    done
}

profile_set() {
    local setting=$1 value=$2 n f
    [[ $setting =~ ^[a-z_][a-z0-9_]*$ ]] || die "not a setting name: '$setting'"
    [[ $value != *[\<\>\&\']* ]] || die "the value must not contain < > & or ': '$value'"
    for n in "${NODES[@]}"; do node_healthy "$n" && break; done
    node_healthy "$n" || die "no node is running"
    [ "$(q "$n" "SELECT count() FROM system.settings WHERE name = '$setting'")" = 1 ] ||
        die "node$n has no setting '$setting' (system.settings)"
    [ -f "$(profile_orig "$setting")" ] ||
        q "$n" "SELECT value FROM system.settings WHERE name = '$setting'" >"$(profile_orig "$setting")"
    for n in "${NODES[@]}"; do
        f=$(profile_file "$n" "$setting")
        # replace="replace": swap the element, whatever users.xml had for it.
        printf '<?xml version="1.0"?>\n<!-- cluster.sh profile %s %s -->\n<yandex><profiles><default><%s replace="replace">%s</%s></default></profiles></yandex>\n' \
            "$setting" "$value" "$setting" "$value" "$setting" >"$f.tmp"
        chown clickhouse:clickhouse "$f.tmp"
        mv "$f.tmp" "$f"   # atomic: the reloader never reads half a file
    done
    profile_wait "$setting" "$value"
    log "default profile: $setting = $value"
}

profile_reset() {
    local orig setting value
    for orig in "$DIR"/profile-*.orig; do
        [ -f "$orig" ] || continue
        setting=${orig##*/profile-}; setting=${setting%.orig}
        value=$(cat "$orig")
        rm -f "$DIR"/node*/users.d/"profile-$setting.xml"
        profile_wait "$setting" "$value"
        rm -f "$orig"
        log "default profile: $setting back to '$value'"
    done
}

# ---------------------------------------------------------------------------- verify

VERIFY_DB=exposures_cluster_verify

# The project's reference layout for 18.16 (migrations/clickhouse/events_clickhouse_18.sql)
# made replicated and created on every node; printed so the report can quote it.
verify_local_ddl() {
    local src=$REPO/migrations/clickhouse/events_clickhouse_18.sql ddl table engine
    table="$VERIFY_DB.events_local ON CLUSTER $CLUSTER"
    engine="ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/$VERIFY_DB/events_local', '{replica}')"
    ddl=$(grep -v '^--' "$src")
    ddl=${ddl/IF NOT EXISTS events/$table}
    ddl=${ddl/ENGINE = MergeTree/$engine}
    [[ $ddl == *ReplicatedMergeTree* && $ddl == *"ON CLUSTER"* ]] || die "unexpected layout of $src"
    printf '%s' "${ddl%;}"
}

verify() {
    local ddl dist n counts=() total
    ddl=$(verify_local_ddl)
    dist="CREATE TABLE $VERIFY_DB.events ON CLUSTER $CLUSTER AS $VERIFY_DB.events_local ENGINE = Distributed($CLUSTER, $VERIFY_DB, events_local, sipHash64(identifier))"
    q 1 "DROP DATABASE IF EXISTS $VERIFY_DB ON CLUSTER $CLUSTER" >/dev/null
    q 1 "CREATE DATABASE $VERIFY_DB ON CLUSTER $CLUSTER" >/dev/null
    log "verify: $ddl"
    q 1 "$ddl" >/dev/null
    log "verify: $dist"
    q 1 "$dist" >/dev/null
    q 1 "INSERT INTO $VERIFY_DB.events (environment_key, event, feature_name, identifier, value, timestamp)
         SELECT 'production', '\$flag_exposure', 'verify-flag', concat('user-', toString(number)),
                if(number % 2 = 0, 'control', 'variant_a'), toDateTime('2026-06-01 00:00:00') + number * 60
         FROM system.numbers LIMIT 10000" "insert_distributed_sync=1" >/dev/null
    for n in "${NODES[@]}"; do
        q "$n" "SYSTEM SYNC REPLICA $VERIFY_DB.events_local" >/dev/null
        counts[n]=$(q "$n" "SELECT count() FROM $VERIFY_DB.events_local")
    done
    log "verify: local rows node1=${counts[1]} node2=${counts[2]} (shard 1), node3=${counts[3]} node4=${counts[4]} (shard 2)"
    { [ "${counts[1]}" -gt 0 ] && [ "${counts[3]}" -gt 0 ]; } || die "verify: a shard got no rows"
    [ "${counts[1]}" = "${counts[2]}" ] || die "verify: shard 1 replicas differ"
    [ "${counts[3]}" = "${counts[4]}" ] || die "verify: shard 2 replicas differ"
    [ $((counts[1] + counts[3])) = 10000 ] || die "verify: shards hold $((counts[1] + counts[3])) rows, not 10000"
    for n in "${NODES[@]}"; do
        total=$(q "$n" "SELECT count() FROM $VERIFY_DB.events")
        [ "$total" = 10000 ] || die "verify: Distributed count through node$n is $total, not 10000"
    done
    q 1 "DROP DATABASE $VERIFY_DB ON CLUSTER $CLUSTER" >/dev/null
    log "verify: ok (Distributed count 10000 through every node; database dropped)"
}

# ---------------------------------------------------------------------------- commands

start() {
    need_root; install_missing; prepare_dirs
    zk_start
    nodes_start "${NODES[@]}"
    cluster_wait
    # A crashed test may have left a profile override behind; every run starts from the default.
    profile_reset
    log "cluster $CLUSTER ready: $(node_url 1) (nodes on :$(http_port 1)-:$(http_port 4), zookeeper :$ZK_PORT)"
}

stop() {
    local n pids=()
    # In parallel: each 18.16 server takes a moment to shut down.
    for n in "${NODES[@]}"; do node_stop "$n" & pids+=($!); done
    for n in "${pids[@]}"; do wait "$n"; done
    zk_stop
}

status() {
    local rc=0 n
    if zk_healthy; then echo "zookeeper: running on :$ZK_PORT (pid $(zk_pid || echo '?'))"; else echo "zookeeper: down"; rc=1; fi
    for n in "${NODES[@]}"; do
        if node_healthy "$n"; then
            echo "node$n:     running on :$(http_port "$n") (shard $(shard_of "$n"), pid $(node_pid "$n" || echo '?'))"
        else
            echo "node$n:     down"; rc=1
        fi
    done
    echo "state dir: $DIR"
    return $rc
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env)
        echo "export EXPOSURES_TEST_CLUSTER_URL=$(node_url 1)"
        for n in "${NODES[@]}"; do
            echo "export EXPOSURES_TEST_CLUSTER_NODE${n}_URL=$(node_url "$n")"
            echo "export EXPOSURES_TEST_CLUSTER_NODE${n}_PID_FILE=$(node_pidfile "$n")"
        done ;;
    kill)
        check_node_arg "${2:-}"
        pid=$(node_pid "$2" || true)
        [ -n "$pid" ] || die "node$2 is not running"
        kill -9 "$pid"
        while alive "$pid"; do sleep 0.05; done
        log "node$2 SIGKILLed (pid $pid)" ;;
    restart)
        need_root; check_node_arg "${2:-}"
        zk_healthy || die "zookeeper is down (scripts/cluster.sh start)"
        node_stop "$2"
        nodes_start "$2"
        # nodes_start waited out a SIGKILLed node's old ZooKeeper session; its replicas
        # activate as soon as the tables are loaded.
        poll 30 "node$2 to reach ZooKeeper" node_sees_zk "$2"
        poll 60 "node$2's replicas to be active" node_replicas_ok "$2"
        log "node$2 ready" ;;
    sql)
        check_node_arg "${2:-}"
        if [ $# -ge 3 ]; then q "$2" "$3"; else q "$2" "$(cat)"; fi ;;
    profile)
        case "${2:-}" in
            --reset) profile_reset ;;
            "") die "usage: $0 profile SETTING VALUE | --reset" ;;
            *) [ $# -eq 3 ] || die "usage: $0 profile SETTING VALUE | --reset"; profile_set "$2" "$3" ;;
        esac ;;
    verify) verify ;;
    *) echo "usage: $0 {start|stop|status|env|kill N|restart N|sql N QUERY|profile SETTING VALUE|profile --reset|verify}" >&2
       exit 2 ;;
esac
