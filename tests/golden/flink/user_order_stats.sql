-- skewless flink job: source orders, topic orders, views user_order_stats
-- tiles user_order_stats v1 H=300000 ms retention=7800000 ms: c0=user_orders_last_1h:count
-- tiles user_order_stats v1 H=86400000 ms retention=345600000 ms: c0=max_order_amount_7d:max, c1=cancelled_orders_30d:count, c2=refunded_orders_90d:count, c3=user_total_orders_365d:count, c4=completed_orders_365d:count, c5=customer_ltv_365d:sum, c6=last_order_ts:max, c7=last_order_status:last
-- ${ns}_ordered_shared = ${ns}_ordered through the Java Deduplicate (keyed by p; an entry is dropped once M(p) - 3600000 ms > its ts), plus dup, dedup_entries
-- ${ns}_contrib through the Java tile operator (keyed by out_id, key, tile_start; a tile's state is released once tile end + retention <= min over partitions of M(p) - 3600000 ms): {"key_width":1,"value_width":8,"outputs":[{"view":"user_order_stats","tile_ms":300000,"retention_ms":7800000,"kinds":["COUNT"],"key_cols":[3],"arg_col":4},{"view":"user_order_stats","tile_ms":86400000,"retention_ms":345600000,"kinds":["MAX_LONG","COUNT","COUNT","COUNT","COUNT","SUM_INT","MAX_LONG","LAST"],"key_cols":[3],"arg_col":5}]}
CREATE TEMPORARY SYSTEM FUNCTION IF NOT EXISTS skewless_admit AS 'dev.skewless.flink.AdmitFunction' LANGUAGE JAVA;

CREATE TEMPORARY TABLE `${ns}_raw` (
  `bytes_value` BYTES,
  `kafka_partition` INT METADATA FROM 'partition' VIRTUAL,
  `kafka_offset` BIGINT METADATA FROM 'offset' VIRTUAL,
  `kafka_ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  `pt` AS PROCTIME()
) WITH (
  'connector' = 'kafka', 'topic' = '${topic}', 'properties.bootstrap.servers' = '${bootstrap}',
  'properties.group.id' = '${group}', 'scan.startup.mode' = '${startup_mode}', 'format' = 'raw'${extra_source_options}
);

CREATE TEMPORARY VIEW `${ns}_parsed` AS
SELECT
  p,
  o,
  record_ms,
  pt,
  bytes_value,
  CAST(r[2] AS BIGINT) AS ts,
  r[3] AS idk,
  r[4] AS f_1_user_id,
  CAST(r[5] AS BIGINT) AS f_3_amount,
  r[6] AS f_5_status,
  CASE WHEN r[1] IS NOT NULL THEN CONCAT('malformed|', r[1])
    WHEN CAST(r[2] AS BIGINT) > record_ms + 300000 THEN 'future|event time > record timestamp + 300000 ms' END AS reason1
FROM (
  SELECT kafka_partition AS p, kafka_offset AS o,
    EXTRACT(EPOCH FROM kafka_ts) * 1000 + EXTRACT(MILLISECOND FROM kafka_ts) AS record_ms, pt, bytes_value, r
  FROM `${ns}_raw`
  CROSS JOIN UNNEST(ARRAY[ROW(skewless_admit(bytes_value, '{"required":["event_id","user_id","order_id","amount","currency","status","event_time"],"properties":{"event_id":{"type":"string","minLength":1},"user_id":{"type":"string","minLength":1},"order_id":{"type":"string","minLength":1},"amount":{"type":"integer","minimum":0},"currency":{"type":"string","pattern":"^[A-Z]{3}$"},"status":{"type":"string","enum":["placed","completed","cancelled","refunded"]},"event_time":{"type":"string","format":"date-time","pattern":"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z$"}},"event_time":"event_time","ids":[["event_id","event id"],["user_id","key"]],"out":[["user_id","string"],["amount","int64"],["status","string"]]}'))]) AS a(r));

CREATE TEMPORARY VIEW `${ns}_ordered` AS
SELECT p, o, record_ms, ts, idk, f_1_user_id, f_3_amount, f_5_status,
  CASE WHEN reason1 IS NOT NULL OR ts < m - 3600000 THEN bytes_value END AS bytes_value,
  COALESCE(reason1, CASE WHEN ts < m - 3600000 THEN 'late|event time < partition max - 3600000 ms' END) AS reason
FROM (
  SELECT *, MAX(CASE WHEN reason1 IS NULL THEN ts END) OVER (
    PARTITION BY p ORDER BY pt ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS m
  FROM `${ns}_parsed`);

CREATE TEMPORARY VIEW `${ns}_admitted` AS
SELECT p, o, ts, idk, f_1_user_id, f_3_amount, f_5_status, low_ms, low_src
FROM `${ns}_ordered_shared` WHERE reason IS NULL AND NOT dup;

CREATE TEMPORARY VIEW `${ns}_contrib` AS
SELECT ts,
  low_ms,
  low_src,
  CAST(f_1_user_id AS STRING) AS k0,
  CASE WHEN (f_5_status = 'placed') THEN '1' END AS a0_0,
  CASE WHEN (f_5_status = 'placed') AND f_3_amount IS NOT NULL THEN CAST(f_3_amount AS STRING) END AS a1_0,
  CASE WHEN (f_5_status = 'cancelled') THEN '1' END AS a1_1,
  CASE WHEN (f_5_status = 'refunded') THEN '1' END AS a1_2,
  CASE WHEN (f_5_status = 'placed') THEN '1' END AS a1_3,
  CASE WHEN (f_5_status = 'completed') THEN '1' END AS a1_4,
  CASE WHEN (f_5_status = 'completed') AND f_3_amount IS NOT NULL THEN CAST(f_3_amount AS STRING) END AS a1_5,
  CASE WHEN (f_5_status = 'placed') AND ts IS NOT NULL THEN CAST(ts AS STRING) END AS a1_6,
  CASE WHEN f_5_status IS NOT NULL THEN CONCAT(LPAD(CAST(ts AS STRING), 16, '0'), LPAD(CAST(p AS STRING), 10, '0'), LPAD(CAST(o AS STRING), 19, '0'), CAST(f_5_status AS STRING)) END AS a1_7
FROM `${ns}_admitted`;

-- changelog (upsert) to the Redis sink
SELECT 'P' AS kind, '' AS view_name, CAST(0 AS BIGINT) AS tile_ms,
  CAST(p AS STRING) AS k0,
  CAST(0 AS BIGINT) AS tile_start, MAX(o) AS version,
  CAST(MAX(CASE WHEN reason IS NULL THEN ts END) AS STRING) AS c0,
  CAST(COUNT(*) AS STRING) AS c1,
  CAST(COUNT(*) FILTER (WHERE reason IS NULL) AS STRING) AS c2,
  CAST(COUNT(*) FILTER (WHERE reason LIKE 'malformed|%') AS STRING) AS c3,
  CAST(COUNT(*) FILTER (WHERE reason LIKE 'future|%') AS STRING) AS c4,
  CAST(COUNT(*) FILTER (WHERE reason LIKE 'late|%') AS STRING) AS c5,
  CAST(COUNT(*) FILTER (WHERE dup) AS STRING) AS c6,
  CAST(LAST_VALUE(dedup_entries) AS STRING) AS c7
FROM `${ns}_ordered_shared`
GROUP BY p
UNION ALL
SELECT 'D' AS kind, '' AS view_name, CAST(0 AS BIGINT) AS tile_ms,
  CAST(p AS STRING) AS k0,
  o AS tile_start, CAST(0 AS BIGINT) AS version,
  SPLIT_INDEX(reason, '|', 0) AS c0,
  SUBSTRING(reason, POSITION('|' IN reason) + 1) AS c1,
  TO_BASE64(bytes_value) AS c2,
  CAST(record_ms AS STRING) AS c3,
  CAST(NULL AS STRING) AS c4,
  CAST(NULL AS STRING) AS c5,
  CAST(NULL AS STRING) AS c6,
  CAST(NULL AS STRING) AS c7
FROM `${ns}_ordered_shared`
WHERE reason IS NOT NULL;
