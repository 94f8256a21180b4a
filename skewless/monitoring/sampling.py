"""Sampling of served values on the read path, cheap enough to leave on (see bench/monitoring.py).

The online reader (or feature server) calls :meth:`ValueSampler.observe` after each read; one call in
``1/rate`` keeps a shallow copy of the values in a bounded buffer. Drift and quality monitors later take
a frame of the buffer with :meth:`ValueSampler.frame`, off the read path.

:func:`sample_entities` lists a few entity keys that hold online state of a view (a bounded Redis SCAN), for
``skewless online sample`` and the drift monitor's sample of the store.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from typing import Any, Mapping

from skewless.core import layout
from skewless.core.dsl import FeatureView, SnapshotView


class ValueSampler:
    """Bernoulli sample (``rate``) of served values per view, the newest ``capacity`` kept per view.

    ``observe`` costs one random draw when the read is not sampled; it never raises.
    """

    def __init__(self, rate: float = 0.01, capacity: int = 10_000, seed: int | None = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"sampling rate must be within [0, 1], got {rate}")
        self.rate = rate
        self.capacity = capacity
        self._random = random.Random(seed).random
        self._buffers: dict[str, deque] = {}
        self._lock = threading.Lock()
        self.observed = 0
        self.sampled = 0
        self.errors = 0

    def observe(self, view: str, values: Mapping[str, Any]) -> None:
        """Maybe keep ``values`` (feature -> value or (value, status)) served for ``view``."""
        self.observed += 1
        if self._random() >= self.rate:
            return
        try:
            row = {k: (v[0] if isinstance(v, tuple) else v) for k, v in values.items()}
            buf = self._buffers.get(view)
            if buf is None:
                with self._lock:
                    buf = self._buffers.setdefault(view, deque(maxlen=self.capacity))
            buf.append(row)
            self.sampled += 1
        except Exception:  # noqa: BLE001 - sampling must never break a read
            self.errors += 1

    def rows(self, view: str) -> list[dict[str, Any]]:
        """A copy of the sampled rows of ``view``."""
        buf = self._buffers.get(view)
        return list(buf) if buf else []

    def frame(self, view: str) -> Any:
        """The sampled rows of ``view`` as a pandas DataFrame."""
        import pandas as pd

        return pd.DataFrame(self.rows(view))

    def views(self) -> list[str]:
        return sorted(self._buffers)


def _glob_escape(text: str) -> str:
    """``text`` matched literally by a Redis SCAN ``MATCH`` pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def sample_entities(client: Any, project: str, view: FeatureView | SnapshotView, n: int = 10,
                    timeout_s: float = 5.0, count: int = 1000) -> list[tuple[str | int, ...]]:
    """Up to ``n`` entity keys that hold online state of ``view`` (tiles, batch record or snapshot), read with
    ``SCAN ... COUNT count`` until ``n`` distinct keys are found, the keyspace is done or ``timeout_s`` passed."""
    prefix = layout.view_prefix(project, view) + ":{"
    found: dict[tuple[str | int, ...], None] = {}
    deadline = time.monotonic() + timeout_s
    cursor = 0
    while len(found) < n and time.monotonic() < deadline:
        cursor, keys = client.scan(cursor=cursor, match=_glob_escape(prefix) + "*", count=count)
        for key in keys:
            text = key.decode() if isinstance(key, bytes) else str(key)
            encoded, closed, _ = text[len(prefix):].partition("}")
            if closed:
                found.setdefault(layout.decode_entity_key(encoded), None)
            if len(found) >= n:
                break
        if int(cursor) == 0:
            break
    return list(found)
