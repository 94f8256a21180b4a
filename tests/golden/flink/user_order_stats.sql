-- skewless flink job: source orders, topic orders, views user_order_stats
-- tiles user_order_stats v1 H=300000 ms retention=7800000 ms: c0=user_orders_last_1h:count
-- tiles user_order_stats v1 H=86400000 ms retention=345600000 ms: c0=max_order_amount_7d:max, c1=cancelled_orders_30d:count, c2=refunded_orders_90d:count, c3=user_total_orders_365d:count, c4=completed_orders_365d:count, c5=customer_ltv_365d:sum, c6=last_order_ts:max, c7=last_order_status:last
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

CREATE TEMPORARY VIEW `${ns}_fields` AS
SELECT p, o, record_ms, pt, bytes_value, v, is_object, w_0_event_id, w_1_user_id, w_2_order_id, w_3_amount, w_4_currency, w_5_status, w_6_event_time, s_0_event_id, s_1_user_id, s_2_order_id, s_3_amount, s_4_currency, s_5_status, s_6_event_time
FROM (
  SELECT kafka_partition AS p, kafka_offset AS o,
    EXTRACT(EPOCH FROM kafka_ts) * 1000 + EXTRACT(MILLISECOND FROM kafka_ts) AS record_ms, pt, bytes_value, v
  FROM `${ns}_raw`
  CROSS JOIN UNNEST(ARRAY[DECODE(bytes_value, 'UTF-8')]) AS d(v_decoded)
  CROSS JOIN UNNEST(ARRAY[CASE WHEN bytes_value IS NOT NULL AND (POSITION(U&'\FFFD' IN v_decoded) = 0
    OR ENCODE(v_decoded, 'UTF-8') = bytes_value) THEN v_decoded END]) AS e(v))
CROSS JOIN UNNEST(ARRAY[ROW(
  v IS JSON OBJECT,
  JSON_QUERY(v, '$.event_id' WITH ARRAY WRAPPER),
  JSON_QUERY(v, '$.user_id' WITH ARRAY WRAPPER),
  JSON_QUERY(v, '$.order_id' WITH ARRAY WRAPPER),
  JSON_QUERY(v, '$.amount' WITH ARRAY WRAPPER),
  JSON_QUERY(v, '$.currency' WITH ARRAY WRAPPER),
  JSON_QUERY(v, '$.status' WITH ARRAY WRAPPER),
  JSON_QUERY(v, '$.event_time' WITH ARRAY WRAPPER))]) AS j(is_object, w_0_event_id, w_1_user_id, w_2_order_id, w_3_amount, w_4_currency, w_5_status, w_6_event_time)
CROSS JOIN UNNEST(ARRAY[ROW(
  CASE WHEN w_0_event_id LIKE '["%' AND POSITION('\' IN w_0_event_id) = 0 THEN SUBSTRING(w_0_event_id, 3, CHAR_LENGTH(w_0_event_id) - 4)
    WHEN w_0_event_id LIKE '["%' THEN JSON_VALUE(v, '$.event_id')
    WHEN w_0_event_id IN ('[null]') THEN NULL ELSE SUBSTRING(w_0_event_id, 2, CHAR_LENGTH(w_0_event_id) - 2) END,
  CASE WHEN w_1_user_id LIKE '["%' AND POSITION('\' IN w_1_user_id) = 0 THEN SUBSTRING(w_1_user_id, 3, CHAR_LENGTH(w_1_user_id) - 4)
    WHEN w_1_user_id LIKE '["%' THEN JSON_VALUE(v, '$.user_id')
    WHEN w_1_user_id IN ('[null]') THEN NULL ELSE SUBSTRING(w_1_user_id, 2, CHAR_LENGTH(w_1_user_id) - 2) END,
  CASE WHEN w_2_order_id LIKE '["%' AND POSITION('\' IN w_2_order_id) = 0 THEN SUBSTRING(w_2_order_id, 3, CHAR_LENGTH(w_2_order_id) - 4)
    WHEN w_2_order_id LIKE '["%' THEN JSON_VALUE(v, '$.order_id')
    WHEN w_2_order_id IN ('[null]') THEN NULL ELSE SUBSTRING(w_2_order_id, 2, CHAR_LENGTH(w_2_order_id) - 2) END,
  CASE WHEN w_3_amount LIKE '["%' AND POSITION('\' IN w_3_amount) = 0 THEN SUBSTRING(w_3_amount, 3, CHAR_LENGTH(w_3_amount) - 4)
    WHEN w_3_amount LIKE '["%' THEN JSON_VALUE(v, '$.amount')
    WHEN w_3_amount IN ('[null]') THEN NULL ELSE SUBSTRING(w_3_amount, 2, CHAR_LENGTH(w_3_amount) - 2) END,
  CASE WHEN w_4_currency LIKE '["%' AND POSITION('\' IN w_4_currency) = 0 THEN SUBSTRING(w_4_currency, 3, CHAR_LENGTH(w_4_currency) - 4)
    WHEN w_4_currency LIKE '["%' THEN JSON_VALUE(v, '$.currency')
    WHEN w_4_currency IN ('[null]') THEN NULL ELSE SUBSTRING(w_4_currency, 2, CHAR_LENGTH(w_4_currency) - 2) END,
  CASE WHEN w_5_status LIKE '["%' AND POSITION('\' IN w_5_status) = 0 THEN SUBSTRING(w_5_status, 3, CHAR_LENGTH(w_5_status) - 4)
    WHEN w_5_status LIKE '["%' THEN JSON_VALUE(v, '$.status')
    WHEN w_5_status IN ('[null]') THEN NULL ELSE SUBSTRING(w_5_status, 2, CHAR_LENGTH(w_5_status) - 2) END,
  CASE WHEN w_6_event_time LIKE '["%' AND POSITION('\' IN w_6_event_time) = 0 THEN SUBSTRING(w_6_event_time, 3, CHAR_LENGTH(w_6_event_time) - 4)
    WHEN w_6_event_time LIKE '["%' THEN JSON_VALUE(v, '$.event_time')
    WHEN w_6_event_time IN ('[null]') THEN NULL ELSE SUBSTRING(w_6_event_time, 2, CHAR_LENGTH(w_6_event_time) - 2) END)]) AS k(s_0_event_id, s_1_user_id, s_2_order_id, s_3_amount, s_4_currency, s_5_status, s_6_event_time);

CREATE TEMPORARY VIEW `${ns}_parsed` AS
SELECT
  p,
  o,
  record_ms,
  pt,
  bytes_value,
  ts,
  CASE WHEN w_0_event_id LIKE '["%' THEN CONCAT('s', s_0_event_id) ELSE CONCAT('i', s_0_event_id) END AS idk,
  CASE WHEN w_0_event_id LIKE '["%' THEN s_0_event_id END AS f_0_event_id,
  CASE WHEN w_1_user_id LIKE '["%' THEN s_1_user_id END AS f_1_user_id,
  CASE WHEN w_2_order_id LIKE '["%' THEN s_2_order_id END AS f_2_order_id,
  CASE WHEN REGEXP(w_3_amount, '^\[-?[0-9]+\]$') THEN TRY_CAST(s_3_amount AS BIGINT) END AS f_3_amount,
  CASE WHEN w_4_currency LIKE '["%' THEN s_4_currency END AS f_4_currency,
  CASE WHEN w_5_status LIKE '["%' THEN s_5_status END AS f_5_status,
  CASE
    WHEN v IS NULL THEN 'malformed|value is not UTF-8 (or empty)'
    WHEN NOT is_object THEN 'malformed|not a JSON object'
    WHEN REGEXP(v, '^\s*\{[^{\[]*\}\s*$') AND REGEXP(v, '"([^"\\]*)"\s*:[\s\S]*"\1"\s*:') THEN 'malformed|duplicate JSON key'
    WHEN REGEXP(v, '[:\[,]\s*(?:(?:[1-9][0-9]{19,}|9[3-9][0-9]{17}|92[3-9][0-9]{16}|922[4-9][0-9]{15}|9223[4-9][0-9]{14}|92233[8-9][0-9]{13}|922337[3-9][0-9]{12}|9223372[1-9][0-9]{11}|92233720[4-9][0-9]{10}|922337203[7-9][0-9]{9}|9223372036[9-9][0-9]{8}|92233720368[6-9][0-9]{7}|922337203685[5-9][0-9]{6}|9223372036854[8-9][0-9]{5}|92233720368547[8-9][0-9]{4}|922337203685477[6-9][0-9]{3}|9223372036854775[9-9][0-9]{2}|92233720368547758[1-9][0-9]{1}|922337203685477580[8-9][0-9]{0})|-(?:[1-9][0-9]{19,}|9[3-9][0-9]{17}|92[3-9][0-9]{16}|922[4-9][0-9]{15}|9223[4-9][0-9]{14}|92233[8-9][0-9]{13}|922337[3-9][0-9]{12}|9223372[1-9][0-9]{11}|92233720[4-9][0-9]{10}|922337203[7-9][0-9]{9}|9223372036[9-9][0-9]{8}|92233720368[6-9][0-9]{7}|922337203685[5-9][0-9]{6}|9223372036854[8-9][0-9]{5}|92233720368547[8-9][0-9]{4}|922337203685477[6-9][0-9]{3}|9223372036854775[9-9][0-9]{2}|92233720368547758[1-9][0-9]{1}|922337203685477580[9-9][0-9]{0}))\s*[,}\]]') THEN 'malformed|integer outside int64'
    WHEN CASE WHEN w_0_event_id IS NULL THEN TRUE ELSE NOT ((w_0_event_id LIKE '["%') AND (NOT w_0_event_id LIKE '["%' OR CHAR_LENGTH(s_0_event_id) >= 1)) END THEN 'malformed|schema: event_id'
    WHEN CASE WHEN w_1_user_id IS NULL THEN TRUE ELSE NOT ((w_1_user_id LIKE '["%') AND (NOT w_1_user_id LIKE '["%' OR CHAR_LENGTH(s_1_user_id) >= 1)) END THEN 'malformed|schema: user_id'
    WHEN CASE WHEN w_2_order_id IS NULL THEN TRUE ELSE NOT ((w_2_order_id LIKE '["%') AND (NOT w_2_order_id LIKE '["%' OR CHAR_LENGTH(s_2_order_id) >= 1)) END THEN 'malformed|schema: order_id'
    WHEN CASE WHEN w_3_amount IS NULL THEN TRUE ELSE NOT (((REGEXP(w_3_amount, '^\[-?[0-9]') AND TRY_CAST(s_3_amount AS DOUBLE) = FLOOR(TRY_CAST(s_3_amount AS DOUBLE)))) AND (NOT REGEXP(w_3_amount, '^\[-?[0-9]') OR TRY_CAST(s_3_amount AS DOUBLE) >= 0.0)) END THEN 'malformed|schema: amount'
    WHEN CASE WHEN w_4_currency IS NULL THEN TRUE ELSE NOT ((w_4_currency LIKE '["%') AND (NOT w_4_currency LIKE '["%' OR REGEXP(s_4_currency, '^[A-Z]{3}$'))) END THEN 'malformed|schema: currency'
    WHEN CASE WHEN w_5_status IS NULL THEN TRUE ELSE NOT ((w_5_status LIKE '["%') AND (w_5_status LIKE '["%' AND s_5_status IN ('placed', 'completed', 'cancelled', 'refunded'))) END THEN 'malformed|schema: status'
    WHEN CASE WHEN w_6_event_time IS NULL THEN TRUE ELSE NOT ((w_6_event_time LIKE '["%') AND (NOT w_6_event_time LIKE '["%' OR REGEXP(s_6_event_time, '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$')) AND (NOT w_6_event_time LIKE '["%' OR (REGEXP(s_6_event_time, '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z\z') AND DATE_FORMAT(TO_TIMESTAMP(SUBSTRING(s_6_event_time, 1, 19), 'yyyy-MM-dd''T''HH:mm:ss'), 'yyyy-MM-dd''T''HH:mm:ss') = SUBSTRING(s_6_event_time, 1, 19)))) END THEN 'malformed|schema: event_time'
    WHEN ts IS NULL THEN 'malformed|event time event_time: missing, null or not epoch ms / ISO-8601 with a zone in 1970..9999'
    WHEN NOT ((w_0_event_id LIKE '["%' AND s_0_event_id <> '') OR REGEXP(w_0_event_id, '^\[-?[0-9]+\]$')) THEN 'malformed|key field event_id: missing, null, empty or not a string/integer'
    WHEN NOT ((w_1_user_id LIKE '["%' AND s_1_user_id <> '') OR REGEXP(w_1_user_id, '^\[-?[0-9]+\]$')) THEN 'malformed|key field user_id: missing, null, empty or not a string/integer'
    WHEN ts > record_ms + 300000 THEN 'future|event time > record timestamp + 300000 ms'
  END AS reason1
FROM `${ns}_fields`
CROSS JOIN UNNEST(ARRAY[CASE WHEN (CASE WHEN REGEXP(w_6_event_time, '^\[-?[0-9]+\]$') THEN TRY_CAST(s_6_event_time AS BIGINT) ELSE CASE WHEN w_6_event_time LIKE '["%' AND REGEXP(s_6_event_time, '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})\z') AND (s_6_event_time LIKE '%Z' OR (CAST(SUBSTRING(s_6_event_time, CHAR_LENGTH(s_6_event_time) - 4, 2) AS INT) <= 23 AND CAST(SUBSTRING(s_6_event_time, CHAR_LENGTH(s_6_event_time) - 1, 2) AS INT) <= 59)) AND DATE_FORMAT(TO_TIMESTAMP(SUBSTRING(s_6_event_time, 1, 19), 'yyyy-MM-dd''T''HH:mm:ss'), 'yyyy-MM-dd''T''HH:mm:ss') = SUBSTRING(s_6_event_time, 1, 19) THEN UNIX_TIMESTAMP(SUBSTRING(s_6_event_time, 1, 19), 'yyyy-MM-dd''T''HH:mm:ss') * 1000 + COALESCE(CAST(RPAD(SUBSTRING(REGEXP_EXTRACT(s_6_event_time, '\.([0-9]{1,9})', 1), 1, 3), 3, '0') AS BIGINT), 0) - (CASE WHEN s_6_event_time LIKE '%Z' THEN 0 ELSE (CASE WHEN SUBSTRING(s_6_event_time, CHAR_LENGTH(s_6_event_time) - 5, 1) = '-' THEN -1 ELSE 1 END) * (CAST(SUBSTRING(s_6_event_time, CHAR_LENGTH(s_6_event_time) - 4, 2) AS BIGINT) * 3600000 + CAST(SUBSTRING(s_6_event_time, CHAR_LENGTH(s_6_event_time) - 1, 2) AS BIGINT) * 60000) END) END END) BETWEEN 0 AND 253402300799999 THEN (CASE WHEN REGEXP(w_6_event_time, '^\[-?[0-9]+\]$') THEN TRY_CAST(s_6_event_time AS BIGINT) ELSE CASE WHEN w_6_event_time LIKE '["%' AND REGEXP(s_6_event_time, '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})\z') AND (s_6_event_time LIKE '%Z' OR (CAST(SUBSTRING(s_6_event_time, CHAR_LENGTH(s_6_event_time) - 4, 2) AS INT) <= 23 AND CAST(SUBSTRING(s_6_event_time, CHAR_LENGTH(s_6_event_time) - 1, 2) AS INT) <= 59)) AND DATE_FORMAT(TO_TIMESTAMP(SUBSTRING(s_6_event_time, 1, 19), 'yyyy-MM-dd''T''HH:mm:ss'), 'yyyy-MM-dd''T''HH:mm:ss') = SUBSTRING(s_6_event_time, 1, 19) THEN UNIX_TIMESTAMP(SUBSTRING(s_6_event_time, 1, 19), 'yyyy-MM-dd''T''HH:mm:ss') * 1000 + COALESCE(CAST(RPAD(SUBSTRING(REGEXP_EXTRACT(s_6_event_time, '\.([0-9]{1,9})', 1), 1, 3), 3, '0') AS BIGINT), 0) - (CASE WHEN s_6_event_time LIKE '%Z' THEN 0 ELSE (CASE WHEN SUBSTRING(s_6_event_time, CHAR_LENGTH(s_6_event_time) - 5, 1) = '-' THEN -1 ELSE 1 END) * (CAST(SUBSTRING(s_6_event_time, CHAR_LENGTH(s_6_event_time) - 4, 2) AS BIGINT) * 3600000 + CAST(SUBSTRING(s_6_event_time, CHAR_LENGTH(s_6_event_time) - 1, 2) AS BIGINT) * 60000) END) END END) END]) AS t(ts);

CREATE TEMPORARY VIEW `${ns}_ordered` AS
SELECT p, o, record_ms, bytes_value, ts, idk, f_0_event_id, f_1_user_id, f_2_order_id, f_3_amount, f_4_currency, f_5_status,
  COALESCE(reason1, CASE WHEN ts < m - 3600000 THEN 'late|event time < partition max - 3600000 ms' END) AS reason
FROM (
  SELECT *, MAX(CASE WHEN reason1 IS NULL THEN ts END) OVER (
    PARTITION BY p ORDER BY pt ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS m
  FROM `${ns}_parsed`);

CREATE TEMPORARY VIEW `${ns}_admitted` AS
SELECT p, o, ts, idk, f_0_event_id, f_1_user_id, f_2_order_id, f_3_amount, f_4_currency, f_5_status FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY p, idk, ts ORDER BY pt ASC) AS rn
  FROM `${ns}_ordered_shared` WHERE reason IS NULL)
WHERE rn = 1;

-- changelog (upsert) to the Redis sink
SELECT 'T' AS kind, 'user_order_stats' AS view_name, CAST(300000 AS BIGINT) AS tile_ms,
  CAST(f_1_user_id AS STRING) AS k0,
  ts - MOD(ts, 300000) AS tile_start, COUNT(*) AS version,
  CAST(COUNT(*) FILTER (WHERE (f_5_status = 'placed')) AS STRING) AS c0,
  CAST(NULL AS STRING) AS c1,
  CAST(NULL AS STRING) AS c2,
  CAST(NULL AS STRING) AS c3,
  CAST(NULL AS STRING) AS c4,
  CAST(NULL AS STRING) AS c5,
  CAST(NULL AS STRING) AS c6,
  CAST(NULL AS STRING) AS c7
FROM `${ns}_admitted`
GROUP BY f_1_user_id, ts - MOD(ts, 300000)
UNION ALL
SELECT 'T' AS kind, 'user_order_stats' AS view_name, CAST(86400000 AS BIGINT) AS tile_ms,
  CAST(f_1_user_id AS STRING) AS k0,
  ts - MOD(ts, 86400000) AS tile_start, COUNT(*) AS version,
  CAST(MAX(f_3_amount) FILTER (WHERE (f_5_status = 'placed') AND f_3_amount IS NOT NULL) AS STRING) AS c0,
  CAST(COUNT(*) FILTER (WHERE (f_5_status = 'cancelled')) AS STRING) AS c1,
  CAST(COUNT(*) FILTER (WHERE (f_5_status = 'refunded')) AS STRING) AS c2,
  CAST(COUNT(*) FILTER (WHERE (f_5_status = 'placed')) AS STRING) AS c3,
  CAST(COUNT(*) FILTER (WHERE (f_5_status = 'completed')) AS STRING) AS c4,
  CAST(SUM(CAST(f_3_amount AS DECIMAL(38, 0))) FILTER (WHERE (f_5_status = 'completed') AND f_3_amount IS NOT NULL) AS STRING) AS c5,
  CAST(MAX(ts) FILTER (WHERE (f_5_status = 'placed') AND ts IS NOT NULL) AS STRING) AS c6,
  MAX(CONCAT(LPAD(CAST(ts AS STRING), 16, '0'), LPAD(CAST(p AS STRING), 10, '0'), LPAD(CAST(o AS STRING), 19, '0'), CAST(f_5_status AS STRING))) FILTER (WHERE f_5_status IS NOT NULL) AS c7
FROM `${ns}_admitted`
GROUP BY f_1_user_id, ts - MOD(ts, 86400000)
UNION ALL
SELECT 'P' AS kind, '' AS view_name, CAST(0 AS BIGINT) AS tile_ms,
  CAST(p AS STRING) AS k0,
  CAST(0 AS BIGINT) AS tile_start, MAX(o) AS version,
  CAST(MAX(CASE WHEN reason IS NULL THEN ts END) AS STRING) AS c0,
  CAST(COUNT(*) AS STRING) AS c1,
  CAST(COUNT(*) FILTER (WHERE reason IS NULL) AS STRING) AS c2,
  CAST(COUNT(*) FILTER (WHERE reason LIKE 'malformed|%') AS STRING) AS c3,
  CAST(COUNT(*) FILTER (WHERE reason LIKE 'future|%') AS STRING) AS c4,
  CAST(COUNT(*) FILTER (WHERE reason LIKE 'late|%') AS STRING) AS c5,
  CAST(NULL AS STRING) AS c6,
  CAST(NULL AS STRING) AS c7
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
