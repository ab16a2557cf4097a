-- The same layout for old servers such as Debian's clickhouse-server 18.16, which
-- has no DateTime64, LowCardinality, codecs or data-skipping indexes by default.
-- Used by the local demo and the test suite.
CREATE TABLE IF NOT EXISTS events
(
    environment_key String,
    event           String,
    feature_name    String,
    identifier      String,
    value           String,
    timestamp       DateTime
)
ENGINE = MergeTree
PARTITION BY toDate(timestamp)
ORDER BY (environment_key, event, feature_name, timestamp, identifier);
