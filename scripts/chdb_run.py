#!/usr/bin/env python3
"""Runs SQL on the current ClickHouse engine, in process, with chDB.

Used by the test suite to prove the function's exact query on a current release
(the real server in tests is Debian's old 18.16). Reads a JSON document on stdin:

    {"jobs": [{"name": "...", "session_timezone": "America/New_York",
               "setup": ["CREATE TABLE ...", "INSERT ..."], "query": "SELECT ..."}]}

and prints {"results": {"<name>": [row, ...]}} (rows as JSON objects), or
{"errors": {"<name>": "message"}} for jobs that failed. Each job starts from an
empty database.
"""
import json
import sys
import tempfile

from chdb import session


def run(sess, job):
    sess.query("DROP DATABASE IF EXISTS job")
    sess.query("CREATE DATABASE job")
    sess.query("USE job")
    sess.query("SET session_timezone = '%s'" % job.get("session_timezone", "UTC"))
    for sql in job.get("setup", []):
        sess.query(sql)
    out = sess.query(job["query"], "JSONEachRow").bytes().decode()
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def main():
    jobs = json.load(sys.stdin)["jobs"]
    results, errors = {}, {}
    with tempfile.TemporaryDirectory() as path:
        sess = session.Session(path)
        for job in jobs:
            try:
                results[job["name"]] = run(sess, job)
            except Exception as e:  # report per job; the caller asserts
                errors[job["name"]] = str(e)
        sess.close()
    json.dump({"results": results, "errors": errors}, sys.stdout)


if __name__ == "__main__":
    main()
