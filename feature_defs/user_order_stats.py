"""Windowed order features of a user, from the `orders` event stream.

Every order emits several events (placed, then completed or cancelled, maybe refunded), so counts of
*orders* filter on the status that happens once per order.
"""

from datetime import timedelta

from skewless import (
    Agg,
    Aggregation,
    DaysSince,
    Derived,
    Expectation,
    FeatureView,
    Ref,
    Where,
    Window,
)

from feature_defs.entities import user
from feature_defs.sources import orders

PLACED = Where("status", "==", "placed")
COMPLETED = Where("status", "==", "completed")

user_order_stats = FeatureView(
    name="user_order_stats",
    entity=user,
    source=orders,
    version=1,
    freshness_sla=timedelta(minutes=5),
    features=[
        # stream-served (width <= 1 day)
        Aggregation("user_orders_last_1h", Agg.COUNT, None, Window.hours(1), where=PLACED,
                    description="Orders placed in the last hour."),
        # batch body/tail + the stream's daily tiles after the cut-off (width > 1 day: daily tiles)
        Aggregation("max_order_amount_7d", Agg.MAX, "amount", Window.days(7), where=PLACED,
                    description="Largest order placed in the last 7 days, EUR cents."),
        Aggregation("cancelled_orders_30d", Agg.COUNT, None, Window.days(30), where=Where("status", "==", "cancelled"),
                    description="Orders cancelled in the last 30 days."),
        Aggregation("refunded_orders_90d", Agg.COUNT, None, Window.days(90), where=Where("status", "==", "refunded"),
                    description="Orders refunded in the last 90 days."),
        Aggregation("user_total_orders_365d", Agg.COUNT, None, Window.days(365), where=PLACED,
                    description="Orders placed in the last 365 days."),
        Aggregation("completed_orders_365d", Agg.COUNT, None, Window.days(365), where=COMPLETED,
                    description="Orders completed in the last 365 days."),
        Aggregation("customer_ltv_365d", Agg.SUM, "amount", Window.days(365), where=COMPLETED,
                    description="Lifetime value over the last 365 days: EUR cents of completed orders "
                                "(cancelled and refunded orders never complete or are counted separately)."),
        Derived("avg_order_value_365d", Ref("customer_ltv_365d") / Ref("completed_orders_365d"),
                description="Mean completed order value over 365 days, EUR cents; null without completed orders."),
        # lifetime (batch body + daily stream tiles; never incomplete, stale if the batch is late)
        Aggregation("last_order_ts", Agg.MAX, "event_time", Window.lifetime(), where=PLACED,
                    description="When the user last placed an order."),
        Derived("days_since_last_order", DaysSince(Ref("last_order_ts")),
                description="Whole days since the user last placed an order; null if never."),
        Aggregation("last_order_status", Agg.LAST, "status", Window.lifetime(),
                    description="Status of the user's latest order event."),
    ],
    expectations=[
        Expectation.not_null("user_orders_last_1h"),
        Expectation.not_null("user_total_orders_365d"),
        Expectation.range("user_orders_last_1h", min=0, max=1000),
        Expectation.range("customer_ltv_365d", min=0),
        Expectation.range("days_since_last_order", min=0),
        Expectation.allowed_values("last_order_status", ["placed", "completed", "cancelled", "refunded"]),
        Expectation.max_null_rate("avg_order_value_365d", 0.9),
    ],
    description="Order activity of a user over 1 hour to a lifetime.",
)
