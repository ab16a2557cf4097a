-- Reference layout of the exposure events table for current ClickHouse releases (SPEC 2.1).
-- The function only reads it. Queries filter on the sort-key prefix
-- (environment_key, event, feature_name) plus a timestamp range, so a refresh
-- reads one experiment's granules only.
CREATE TABLE IF NOT EXISTS events
(
    environment_key LowCardinality(String),
    event           LowCardinality(String),
    feature_name    LowCardinality(String),
    identifier      String CODEC(ZSTD(1)),
    value           String CODEC(ZSTD(1)),
    timestamp       DateTime64(3, 'UTC') CODEC(Delta, ZSTD(1)),
    INDEX identifier_bloom identifier TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = MergeTree
PARTITION BY toDate(timestamp)
ORDER BY (environment_key, event, feature_name, timestamp, identifier);
