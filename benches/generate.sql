-- Synthetic exposure events for the query benchmark (benches/query.rs), generated
-- inside ClickHouse. Runs unchanged on 18.16 and on current releases (chDB).
--
-- In the window [{start}, {start} + {seconds}) of environment 'production', flag
-- 'checkout-redesign': exactly {events} `$flag_exposure` rows from exactly
-- {identities} identities (UUID-shaped, 36 characters), variants control /
-- variant_a / variant_b. Every identity has one row at its arrival (arrivals skew
-- early in the window), the rest are repeats after it, with a skewed number per
-- identity (heavy duplication: median 9 rows, the busiest over 100). Identities with
-- id % 100 = 7 (exactly 1 %) also see a second variant. {noise} more rows must be
-- filtered out: another environment, another flag, another event, anonymous
-- exposures (empty identifier), and exposures just outside the window.
INSERT INTO {table}
SELECT environment_key, event, feature_name, identifier, value, {timestamp} AS timestamp
FROM
(
    SELECT
        number AS n,
        intHash64(n) AS h,
        multiIf(n < {identities}, n,
                n < {identities} + {quarantined}, (n % {quarantined}) * 100 + 7,
                n < {events}, toUInt64(floor(pow((h % 1000000000) / 1000000000, 1.5) * {identities})),
                h % {identities}) AS id,
        lower(hex(intHash64(id))) AS h1,
        lower(hex(intHash64(id + 1000000000000))) AS h2,
        if(n >= {events} AND n % 10 = 5, '',
           concat(substring(h1, 1, 8), '-', substring(h1, 9, 4), '-', substring(h1, 13, 4), '-',
                  substring(h2, 1, 4), '-', substring(h2, 5, 12))) AS identifier,
        toUInt64(floor(pow((intHash64(id + 7) % 1000000) / 1000000, 2) * {seconds})) AS arrival,
        (intHash32(id) % 3) + if(id % 100 = 7 AND ((n >= {identities} AND n < {identities} + {quarantined})
                                                   OR (n >= {identities} + {quarantined} AND h % 4 = 0)), 1, 0) AS vi,
        ['control', 'variant_a', 'variant_b'][(vi % 3) + 1] AS value,
        toUInt64({start}) + arrival
            + if(n < {identities}, toUInt64(0), intHash64(n + 3) % toUInt64({seconds} - arrival)) AS in_window,
        multiIf(n < {events}, 'production', n % 10 = 0, 'staging', 'production') AS environment_key,
        multiIf(n < {events}, '$flag_exposure', n % 5 = 1, '$pageview', '$flag_exposure') AS event,
        multiIf(n < {events}, 'checkout-redesign', n % 5 = 2, 'search-ranking', 'checkout-redesign') AS feature_name,
        multiIf(n < {events}, in_window,
                n % 5 = 3, toUInt64({start} - 1 - (h % 86400)),
                n % 5 = 4, toUInt64({start} + {seconds} + (h % 86400)),
                in_window) AS ts
    FROM numbers({total})
)
