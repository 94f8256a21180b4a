-- user_order_stats v1 (spark-3, fingerprint 733ee0b78a975a62)

-- offline event set of the run day
CREATE OR REPLACE TEMP VIEW offline AS
SELECT `user_id`, __ts, __day AS day, __partition, __offset,
  CASE WHEN (`status` = 'placed') THEN 1 END AS `c__user_orders_last_1h`,
  CASE WHEN (`status` = 'placed') THEN `amount` END AS `c__max_order_amount_7d`,
  CASE WHEN (`status` = 'cancelled') THEN 1 END AS `c__cancelled_orders_30d`,
  CASE WHEN (`status` = 'refunded') THEN 1 END AS `c__refunded_orders_90d`,
  CASE WHEN (`status` = 'placed') THEN 1 END AS `c__user_total_orders_365d`,
  CASE WHEN (`status` = 'completed') THEN 1 END AS `c__completed_orders_365d`,
  CASE WHEN (`status` = 'completed') THEN `amount` END AS `c__customer_ltv_365d`,
  CASE WHEN (`status` = 'placed') THEN __ts END AS `c__last_order_ts`,
  `status` AS `c__last_order_status`
FROM (
  SELECT *, _kafka_partition AS __partition, _offset AS __offset,
    row_number() OVER (PARTITION BY __ts, __day, _kafka_partition, `event_id` ORDER BY _offset) AS __rank
  FROM (
    SELECT *, unix_millis(`event_time`) AS __ts, date_from_unix_date(CAST(floor(unix_millis(`event_time`) / 86400000) AS INT)) AS __day
    FROM raw
    WHERE `event_time` >= timestamp_millis(1704067200000L) AND `event_time` < timestamp_millis(1704153600000L)
    AND unix_millis(`event_time`) <= unix_millis(_kafka_ts) + 300000L
    DISTRIBUTE BY __day
  ) AS by_day
) AS deduped
WHERE __rank = 1

-- daily tiles
SELECT `user_id`, day,
  max(`c__max_order_amount_7d`) AS `max_order_amount_7d`,
  count(`c__cancelled_orders_30d`) AS `cancelled_orders_30d`,
  count(`c__refunded_orders_90d`) AS `refunded_orders_90d`,
  count(`c__user_total_orders_365d`) AS `user_total_orders_365d`,
  count(`c__completed_orders_365d`) AS `completed_orders_365d`,
  coalesce(sum(CAST(`c__customer_ltv_365d` AS DECIMAL(38, 0))), 0) AS `customer_ltv_365d`,
  max(`c__last_order_ts`) AS `last_order_ts`,
  max(CASE WHEN `c__last_order_status` IS NOT NULL THEN named_struct('ts', __ts, 'partition', __partition, 'offset', __offset, 'value', `c__last_order_status`) END) AS `last_order_status`
FROM offline
WHERE `c__max_order_amount_7d` IS NOT NULL OR `c__cancelled_orders_30d` IS NOT NULL OR `c__refunded_orders_90d` IS NOT NULL OR `c__user_total_orders_365d` IS NOT NULL OR `c__completed_orders_365d` IS NOT NULL OR `c__customer_ltv_365d` IS NOT NULL OR `c__last_order_ts` IS NOT NULL OR `c__last_order_status` IS NOT NULL
GROUP BY day, `user_id`

-- serving rows for cut-off 1704153600000
SELECT `user_id`,
  max(CASE WHEN day >= DATE'2023-12-28' THEN `max_order_amount_7d` END) AS `w_604800000__body__max_order_amount_7d`,
  max(CASE WHEN day = DATE'2023-12-26' THEN `max_order_amount_7d` END) AS `w_604800000__tail0__max_order_amount_7d`,
  max(CASE WHEN day = DATE'2023-12-27' THEN `max_order_amount_7d` END) AS `w_604800000__tail1__max_order_amount_7d`,
  coalesce(sum(CASE WHEN day >= DATE'2023-12-05' THEN `cancelled_orders_30d` END), 0) AS `w_2592000000__body__cancelled_orders_30d`,
  coalesce(sum(CASE WHEN day = DATE'2023-12-03' THEN `cancelled_orders_30d` END), 0) AS `w_2592000000__tail0__cancelled_orders_30d`,
  coalesce(sum(CASE WHEN day = DATE'2023-12-04' THEN `cancelled_orders_30d` END), 0) AS `w_2592000000__tail1__cancelled_orders_30d`,
  coalesce(sum(CASE WHEN day >= DATE'2023-10-06' THEN `refunded_orders_90d` END), 0) AS `w_7776000000__body__refunded_orders_90d`,
  coalesce(sum(CASE WHEN day = DATE'2023-10-04' THEN `refunded_orders_90d` END), 0) AS `w_7776000000__tail0__refunded_orders_90d`,
  coalesce(sum(CASE WHEN day = DATE'2023-10-05' THEN `refunded_orders_90d` END), 0) AS `w_7776000000__tail1__refunded_orders_90d`,
  coalesce(sum(CASE WHEN day >= DATE'2023-01-04' THEN `user_total_orders_365d` END), 0) AS `w_31536000000__body__user_total_orders_365d`,
  coalesce(sum(CASE WHEN day = DATE'2023-01-02' THEN `user_total_orders_365d` END), 0) AS `w_31536000000__tail0__user_total_orders_365d`,
  coalesce(sum(CASE WHEN day = DATE'2023-01-03' THEN `user_total_orders_365d` END), 0) AS `w_31536000000__tail1__user_total_orders_365d`,
  coalesce(sum(CASE WHEN day >= DATE'2023-01-04' THEN `completed_orders_365d` END), 0) AS `w_31536000000__body__completed_orders_365d`,
  coalesce(sum(CASE WHEN day = DATE'2023-01-02' THEN `completed_orders_365d` END), 0) AS `w_31536000000__tail0__completed_orders_365d`,
  coalesce(sum(CASE WHEN day = DATE'2023-01-03' THEN `completed_orders_365d` END), 0) AS `w_31536000000__tail1__completed_orders_365d`,
  coalesce(sum(CASE WHEN day >= DATE'2023-01-04' THEN `customer_ltv_365d` END), 0) AS `w_31536000000__body__customer_ltv_365d`,
  coalesce(sum(CASE WHEN day = DATE'2023-01-02' THEN `customer_ltv_365d` END), 0) AS `w_31536000000__tail0__customer_ltv_365d`,
  coalesce(sum(CASE WHEN day = DATE'2023-01-03' THEN `customer_ltv_365d` END), 0) AS `w_31536000000__tail1__customer_ltv_365d`,
  max(CASE WHEN true THEN `last_order_ts` END) AS `w_life__body__last_order_ts`,
  max(CASE WHEN true THEN `last_order_status` END) AS `w_life__body__last_order_status`,
  max(day) AS __last_day
FROM (
  SELECT * FROM tiles
  WHERE day < DATE'2024-01-02'
  DISTRIBUTE BY `user_id`
) AS by_entity
GROUP BY `user_id`

-- serving rows for cut-off 1704153600000 from the serving state of the cut-off before
SELECT coalesce(s.`user_id`, t.`user_id`) AS `user_id`,
  t.`b__w_604800000__body__max_order_amount_7d` AS `w_604800000__body__max_order_amount_7d`,
  t.`t__w_604800000__tail0__max_order_amount_7d` AS `w_604800000__tail0__max_order_amount_7d`,
  t.`t__w_604800000__tail1__max_order_amount_7d` AS `w_604800000__tail1__max_order_amount_7d`,
  coalesce(s.`w_2592000000__body__cancelled_orders_30d`, 0L) - coalesce(t.`t__w_2592000000__tail1__cancelled_orders_30d`, 0L) + coalesce(t.`d__w_2592000000__body__cancelled_orders_30d`, 0L) AS `w_2592000000__body__cancelled_orders_30d`,
  coalesce(t.`t__w_2592000000__tail0__cancelled_orders_30d`, 0L) AS `w_2592000000__tail0__cancelled_orders_30d`,
  coalesce(t.`t__w_2592000000__tail1__cancelled_orders_30d`, 0L) AS `w_2592000000__tail1__cancelled_orders_30d`,
  coalesce(s.`w_7776000000__body__refunded_orders_90d`, 0L) - coalesce(t.`t__w_7776000000__tail1__refunded_orders_90d`, 0L) + coalesce(t.`d__w_7776000000__body__refunded_orders_90d`, 0L) AS `w_7776000000__body__refunded_orders_90d`,
  coalesce(t.`t__w_7776000000__tail0__refunded_orders_90d`, 0L) AS `w_7776000000__tail0__refunded_orders_90d`,
  coalesce(t.`t__w_7776000000__tail1__refunded_orders_90d`, 0L) AS `w_7776000000__tail1__refunded_orders_90d`,
  coalesce(s.`w_31536000000__body__user_total_orders_365d`, 0L) - coalesce(t.`t__w_31536000000__tail1__user_total_orders_365d`, 0L) + coalesce(t.`d__w_31536000000__body__user_total_orders_365d`, 0L) AS `w_31536000000__body__user_total_orders_365d`,
  coalesce(t.`t__w_31536000000__tail0__user_total_orders_365d`, 0L) AS `w_31536000000__tail0__user_total_orders_365d`,
  coalesce(t.`t__w_31536000000__tail1__user_total_orders_365d`, 0L) AS `w_31536000000__tail1__user_total_orders_365d`,
  coalesce(s.`w_31536000000__body__completed_orders_365d`, 0L) - coalesce(t.`t__w_31536000000__tail1__completed_orders_365d`, 0L) + coalesce(t.`d__w_31536000000__body__completed_orders_365d`, 0L) AS `w_31536000000__body__completed_orders_365d`,
  coalesce(t.`t__w_31536000000__tail0__completed_orders_365d`, 0L) AS `w_31536000000__tail0__completed_orders_365d`,
  coalesce(t.`t__w_31536000000__tail1__completed_orders_365d`, 0L) AS `w_31536000000__tail1__completed_orders_365d`,
  coalesce(s.`w_31536000000__body__customer_ltv_365d`, 0L) - coalesce(t.`t__w_31536000000__tail1__customer_ltv_365d`, 0L) + coalesce(t.`d__w_31536000000__body__customer_ltv_365d`, 0L) AS `w_31536000000__body__customer_ltv_365d`,
  coalesce(t.`t__w_31536000000__tail0__customer_ltv_365d`, 0L) AS `w_31536000000__tail0__customer_ltv_365d`,
  coalesce(t.`t__w_31536000000__tail1__customer_ltv_365d`, 0L) AS `w_31536000000__tail1__customer_ltv_365d`,
  greatest(s.`w_life__body__last_order_ts`, t.`d__w_life__body__last_order_ts`) AS `w_life__body__last_order_ts`,
  greatest(s.`w_life__body__last_order_status`, t.`d__w_life__body__last_order_status`) AS `w_life__body__last_order_status`,
  greatest(s.__last_day, t.__last_day) AS __last_day
FROM (SELECT * FROM state WHERE cutoff_ms = 1704067200000L) AS s
FULL OUTER JOIN (
  SELECT `user_id`,
    max(CASE WHEN day = DATE'2023-12-26' THEN `max_order_amount_7d` END) AS `t__w_604800000__tail0__max_order_amount_7d`,
    max(CASE WHEN day = DATE'2023-12-27' THEN `max_order_amount_7d` END) AS `t__w_604800000__tail1__max_order_amount_7d`,
    max(CASE WHEN day >= DATE'2023-12-28' THEN `max_order_amount_7d` END) AS `b__w_604800000__body__max_order_amount_7d`,
    coalesce(sum(CASE WHEN day = DATE'2023-12-03' THEN `cancelled_orders_30d` END), 0) AS `t__w_2592000000__tail0__cancelled_orders_30d`,
    coalesce(sum(CASE WHEN day = DATE'2023-12-04' THEN `cancelled_orders_30d` END), 0) AS `t__w_2592000000__tail1__cancelled_orders_30d`,
    coalesce(sum(CASE WHEN day = DATE'2024-01-01' THEN `cancelled_orders_30d` END), 0) AS `d__w_2592000000__body__cancelled_orders_30d`,
    coalesce(sum(CASE WHEN day = DATE'2023-10-04' THEN `refunded_orders_90d` END), 0) AS `t__w_7776000000__tail0__refunded_orders_90d`,
    coalesce(sum(CASE WHEN day = DATE'2023-10-05' THEN `refunded_orders_90d` END), 0) AS `t__w_7776000000__tail1__refunded_orders_90d`,
    coalesce(sum(CASE WHEN day = DATE'2024-01-01' THEN `refunded_orders_90d` END), 0) AS `d__w_7776000000__body__refunded_orders_90d`,
    coalesce(sum(CASE WHEN day = DATE'2023-01-02' THEN `user_total_orders_365d` END), 0) AS `t__w_31536000000__tail0__user_total_orders_365d`,
    coalesce(sum(CASE WHEN day = DATE'2023-01-03' THEN `user_total_orders_365d` END), 0) AS `t__w_31536000000__tail1__user_total_orders_365d`,
    coalesce(sum(CASE WHEN day = DATE'2024-01-01' THEN `user_total_orders_365d` END), 0) AS `d__w_31536000000__body__user_total_orders_365d`,
    coalesce(sum(CASE WHEN day = DATE'2023-01-02' THEN `completed_orders_365d` END), 0) AS `t__w_31536000000__tail0__completed_orders_365d`,
    coalesce(sum(CASE WHEN day = DATE'2023-01-03' THEN `completed_orders_365d` END), 0) AS `t__w_31536000000__tail1__completed_orders_365d`,
    coalesce(sum(CASE WHEN day = DATE'2024-01-01' THEN `completed_orders_365d` END), 0) AS `d__w_31536000000__body__completed_orders_365d`,
    coalesce(sum(CASE WHEN day = DATE'2023-01-02' THEN `customer_ltv_365d` END), 0) AS `t__w_31536000000__tail0__customer_ltv_365d`,
    coalesce(sum(CASE WHEN day = DATE'2023-01-03' THEN `customer_ltv_365d` END), 0) AS `t__w_31536000000__tail1__customer_ltv_365d`,
    coalesce(sum(CASE WHEN day = DATE'2024-01-01' THEN `customer_ltv_365d` END), 0) AS `d__w_31536000000__body__customer_ltv_365d`,
    max(CASE WHEN day = DATE'2024-01-01' THEN `last_order_ts` END) AS `d__w_life__body__last_order_ts`,
    max(CASE WHEN day = DATE'2024-01-01' THEN `last_order_status` END) AS `d__w_life__body__last_order_status`,
    max(CASE WHEN day = DATE'2024-01-01' THEN day END) AS __last_day
  FROM (
    SELECT * FROM tiles
    WHERE (day = DATE'2024-01-01' OR day >= DATE'2023-12-28' OR day = DATE'2023-12-26' OR day = DATE'2023-12-27' OR day = DATE'2023-12-03' OR day = DATE'2023-12-04' OR day = DATE'2023-10-04' OR day = DATE'2023-10-05' OR day = DATE'2023-01-02' OR day = DATE'2023-01-03') AND day < DATE'2024-01-02'
    DISTRIBUTE BY `user_id`
  ) AS by_entity
  GROUP BY `user_id`
) AS t ON s.`user_id` = t.`user_id`
