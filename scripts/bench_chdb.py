#!/usr/bin/env python3
"""The current-engine half of the query benchmark (benches/query.rs), on chDB.

Reads a plan (JSON) on stdin, written by benches/query.rs:

    {"path": "<dir>", "database": "exposures_bench", "ddl": "CREATE TABLE ...",
     "generate": "INSERT INTO ... SELECT ...", "more": ["INSERT ...", ...] (optional, after the
     generated rows), "fingerprint": "...", "total_rows": N,
     "runs": 5, "session_timezone": "Asia/Kolkata",
     "queries": [{"name": "baseline", "sql": "SELECT ...", "settings": {...}}, ...]}

Loads the data once into a persistent chDB session under <dir> (reused while the
fingerprint and row count match), runs one untimed warm-up round and then `runs`
rounds of every query, interleaved (the order rotates each round), and prints

    {"version": "26.x", "loaded": bool, "load_seconds": s,
     "queries": {"<name>": {"rows": [...], "runs": [{"duration_ms", "memory",
                 "cpu_us", "read_rows", "spilled_parts"}, ...]}}}

Time, peak memory and CPU come from system.query_log, which chDB only keeps with
a server configuration: the script writes one (<dir>/query_log.xml) and opens the
session with it. Each run is tagged through the `log_comment` setting.
"""
import json
import os
import sys
import time

from chdb import session


def log(msg):
    print("[bench_chdb] " + msg, file=sys.stderr, flush=True)


CONFIG = """<clickhouse>
    <query_log>
        <database>system</database>
        <table>query_log</table>
        <flush_interval_milliseconds>1000</flush_interval_milliseconds>
    </query_log>
</clickhouse>
"""


def scalar(sess, sql):
    return sess.query(sql, "TabSeparated").bytes().decode().strip()


def ensure_data(sess, plan):
    db = plan["database"]
    try:
        loaded = scalar(sess, "SELECT fingerprint FROM %s.bench_meta" % db)
        rows = int(scalar(sess, "SELECT count() FROM %s.events" % db))
    except Exception:
        loaded, rows = None, -1
    if loaded == plan["fingerprint"] and rows == plan["total_rows"]:
        log("reusing %s.events (%d rows)" % (db, rows))
        return False, 0.0
    log("loading %s.events (%d rows)" % (db, plan["total_rows"]))
    started = time.time()
    for sql in [
        "CREATE DATABASE IF NOT EXISTS %s" % db,
        "DROP TABLE IF EXISTS %s.bench_meta" % db,
        "DROP TABLE IF EXISTS %s.events" % db,
        plan["ddl"],
        plan["generate"],
        "OPTIMIZE TABLE %s.events FINAL" % db,
    ] + plan.get("more", []) + [
        "CREATE TABLE %s.bench_meta (fingerprint String) ENGINE = TinyLog" % db,
        "INSERT INTO %s.bench_meta VALUES ('%s')" % (db, plan["fingerprint"]),
    ]:
        sess.query(sql)
    seconds = time.time() - started
    log("loaded in %.0f s" % seconds)
    return True, seconds


def with_settings(sql, settings):
    if not settings:
        return sql
    return sql + "\nSETTINGS " + ", ".join("%s = %s" % (k, v) for k, v in settings.items())


def main():
    plan = json.load(sys.stdin)
    path = plan["path"]
    os.makedirs(path, exist_ok=True)
    config = os.path.join(path, "query_log.xml")
    with open(config, "w") as f:
        f.write(CONFIG)
    sess = session.Session(os.path.join(path, "data") + "?config-file=" + config)
    version = scalar(sess, "SELECT version()")
    loaded, load_seconds = ensure_data(sess, plan)

    sess.query("USE %s" % plan["database"])
    sess.query("SET session_timezone = '%s'" % plan.get("session_timezone", "UTC"))
    sess.query("SET log_queries = 1")
    tag = "exposures-bench-%d" % int(time.time() * 1000)
    queries = plan["queries"]
    rows = {}
    for rnd in range(plan["runs"] + 1):
        for k in range(len(queries)):
            q = queries[(k + rnd) % len(queries)]
            sess.query("SET log_comment = '%s|%s|%d'" % (tag, q["name"], rnd))
            started = time.time()
            out = sess.query(with_settings(q["sql"], q.get("settings")), "JSONEachRow").bytes().decode()
            if rnd == 0:
                log("warm-up %s: %.2f s" % (q["name"], time.time() - started))
                rows[q["name"]] = [json.loads(line) for line in out.splitlines() if line.strip()]
        if rnd > 0:
            log("round %d/%d done" % (rnd, plan["runs"]))
    sess.query("SET log_comment = ''")
    sess.query("SYSTEM FLUSH LOGS")
    logged = sess.query(
        """SELECT log_comment, query_duration_ms AS duration_ms, memory_usage AS memory,
                  read_rows, ProfileEvents['UserTimeMicroseconds'] + ProfileEvents['SystemTimeMicroseconds'] AS cpu_us,
                  ProfileEvents['ExternalAggregationWritePart'] AS spilled_parts
           FROM system.query_log
           WHERE type = 'QueryFinish' AND query_kind = 'Select' AND startsWith(log_comment, '%s|')""" % tag,
        "JSONEachRow",
    ).bytes().decode()
    runs = {q["name"]: [] for q in queries}
    for line in logged.splitlines():
        r = json.loads(line)
        _, name, rnd = r.pop("log_comment").split("|")
        if int(rnd) > 0:
            runs[name].append({k: float(v) for k, v in r.items()})
    sess.close()
    result = {
        "version": version,
        "loaded": loaded,
        "load_seconds": load_seconds,
        "queries": {name: {"rows": rows[name], "runs": runs[name]} for name in runs},
    }
    for name, r in runs.items():
        if len(r) != plan["runs"]:
            log("system.query_log has %d of %d runs of %s" % (len(r), plan["runs"], name))
            sys.exit(1)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
