"""Entities: what features describe."""

from skewless import Entity

user = Entity("user", {"user_id": "string"}, description="A shop customer, keyed by the account id.")
