"""Sources: where the events and snapshot rows come from."""

from datetime import timedelta

from skewless import EventSource, TableSource

orders = EventSource(
    name="orders",
    schema="orders",  # schemas/orders.schema.json
    topic="orders",
    table="raw.orders",
    event_time="event_time",
    event_id="event_id",
    partition_key="user_id",
    allowed_lateness=timedelta(hours=1),
    clock_skew_tolerance=timedelta(minutes=5),
    description="Order lifecycle events (placed, completed, cancelled, refunded); amount in EUR cents.",
)

customer_profiles = TableSource(
    name="customer_profiles",
    schema="customer_profile",  # schemas/customer_profile.schema.json
    table="crm.customer_profile",
    timestamp="event_time",
    created_at="created_at",
    description="Daily CRM export: one row per user per snapshot.",
)
