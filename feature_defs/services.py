"""Feature services: the features each model reads. The same features are reused across models."""

from skewless import FeatureService

churn_model = FeatureService(
    "churn_model",
    [
        "user_order_stats:user_orders_last_1h",
        "user_order_stats:max_order_amount_7d",
        "user_order_stats:cancelled_orders_30d",
        "user_order_stats:user_total_orders_365d",
        "user_order_stats:customer_ltv_365d",
        "user_order_stats:avg_order_value_365d",
        "user_order_stats:days_since_last_order",
        "user_order_stats:last_order_status",
        "customer_profile:segment",
    ],
    description="Will the user stop ordering within 60 days?",
)

upsell_model = FeatureService(
    "upsell_model",
    [
        "user_order_stats:user_orders_last_1h",
        "user_order_stats:avg_order_value_365d",
        "user_order_stats:max_order_amount_7d",
        "customer_profile:segment",
    ],
    description="Which premium offer to show at checkout.",
)

credit_model = FeatureService(
    "credit_model",
    [
        "customer_profile",  # every field of the view
        "user_order_stats:customer_ltv_365d",
        "user_order_stats:refunded_orders_90d",
        "user_order_stats:days_since_last_order",
    ],
    description="Pay-later eligibility.",
)
