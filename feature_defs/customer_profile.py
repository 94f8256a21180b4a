"""Snapshot features: the CRM's daily customer profile, valid for one day after its timestamp."""

from datetime import timedelta

from skewless import Expectation, Field, SnapshotView

from feature_defs.entities import user
from feature_defs.sources import customer_profiles

customer_profile = SnapshotView(
    name="customer_profile",
    entity=user,
    source=customer_profiles,
    fields=[
        Field("credit_score", "int64", description="Bureau score (300-850) at snapshot time."),
        Field("segment", "string", description="CRM marketing segment."),
    ],
    ttl=timedelta(days=1),
    version=1,
    freshness_sla=timedelta(hours=26),  # daily export plus two hours of slack
    expectations=[
        Expectation.range("credit_score", min=300, max=850),
        Expectation.allowed_values("segment", ["new", "regular", "vip", "dormant"]),
        Expectation.max_null_rate("credit_score", 0.05),
    ],
    description="Latest CRM profile row of a user, at most one day old.",
)
