"""Online serving: :func:`~skewless.serving.online.OnlineStore` (values + statuses + ages from Redis in
one round trip), :mod:`~skewless.serving.push` (validated produce to a source's topic) and the HTTP
feature server (:mod:`~skewless.serving.server`, ``skewless serve``). See docs/serving.md."""

from skewless.serving.online import OnlineRequestError, OnlineResponse, OnlineStore
from skewless.serving.push import PushError, PushResult, push_events

__all__ = ["OnlineRequestError", "OnlineResponse", "OnlineStore", "PushError", "PushResult", "push_events"]
