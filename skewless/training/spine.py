"""A spine: entities x timestamps at a cadence, for a training set without an entity_df.

Timestamps are ``start, start + every, ...`` strictly before ``end`` (UTC). Entities are given, or read
from the source table of the requested views (the distinct keys with an event / row before ``end``).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from skewless.core.timeutil import to_epoch_ms
from skewless.training.plan import PitPlan, TrainingInputError

_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
MAX_SPINE_ROWS = 500_000_000


def parse_every(text: str) -> int:
    """``"1h"``, ``"15m"``, ``"1d"``, ``"500ms"`` as milliseconds."""
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|min|h|d|w)\s*", str(text))
    if not m or int(m.group(1)) <= 0:
        raise TrainingInputError(f"cadence {text!r} is not a positive duration such as 15m, 1h or 1d")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_instant(text: str | datetime, what: str) -> int:
    if isinstance(text, datetime):
        return to_epoch_ms(text)
    try:
        value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise TrainingInputError(f"{what} {text!r} is not an ISO date or date-time (e.g. 2024-01-01 or "
                                 "2024-01-01T06:00:00Z)") from None
    return to_epoch_ms(value if value.tzinfo else value.replace(tzinfo=timezone.utc))


def entities_from_sources(plan: PitPlan, catalog: Any, end_ms: int) -> pa.Table:
    """Distinct entity keys found in the requested views' source tables (events / rows before ``end``)."""
    from pyiceberg.expressions import LessThan

    from skewless.training.sources import iso_utc

    key_names = list(plan.key_columns)
    found = []
    for v in plan.views:
        if list(v.key_names) != key_names:
            continue
        table = catalog.load_table(v.view.source.table.removeprefix("skewless."))
        data = table.scan(row_filter=LessThan(v.plan.scan.event_time, iso_utc(end_ms)),
                          selected_fields=tuple(key_names)).to_arrow()
        found.append(data.group_by(key_names).aggregate([]))
    if not found:
        raise TrainingInputError("the requested views have different entities: pass the entities explicitly")
    return pa.concat_tables(found).group_by(key_names).aggregate([]).sort_by([(k, "ascending") for k in key_names])


def build_spine(plan: PitPlan, start: str | datetime, end: str | datetime, every: str, *,
                entities: pa.Table | Sequence[Any] | None = None, catalog: Any = None,
                timestamp_column: str = "event_timestamp") -> pa.Table:
    """Every entity at every instant of ``[start, end)`` stepping by ``every`` (entity-major order)."""
    t0, t1, step = parse_instant(start, "start"), parse_instant(end, "end"), parse_every(every)
    if t1 <= t0:
        raise TrainingInputError(f"end {end} is not after start {start}")
    key_names = list(plan.key_columns)
    if entities is None:
        if catalog is None:
            raise TrainingInputError("no entities given and no catalog to read them from")
        entities = entities_from_sources(plan, catalog, t1)
    elif not isinstance(entities, pa.Table):
        if len(key_names) != 1:
            raise TrainingInputError(f"entities as a list need a single join key; the views have {key_names}")
        entities = pa.table({key_names[0]: list(entities)})
    instants = np.arange(t0, t1, step, dtype=np.int64)
    rows = entities.num_rows * len(instants)
    if rows == 0:
        raise TrainingInputError("the spine is empty: no entities found or no instant in [start, end)")
    if rows > MAX_SPINE_ROWS:
        raise TrainingInputError(f"the spine would have {rows:,} rows: narrow the range or coarsen the cadence")
    index = np.repeat(np.arange(entities.num_rows), len(instants))
    spine = entities.select(key_names).take(pa.array(index))
    ts = pa.array(np.tile(instants, entities.num_rows), pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
    return spine.append_column(timestamp_column, ts)
