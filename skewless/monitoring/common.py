"""Shared pieces of monitoring: statuses, the "never raise into the pipeline" guard, value helpers.

Every public monitor returns a report; when the monitor itself fails the report has status ``error``
and the reason, so a broken check shows up on dashboards instead of stopping a job.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, TypeVar

log = logging.getLogger("skewless.monitoring")

OK = "ok"
WARN = "warn"
STALE = "stale"
ALERT = "alert"
FAILED = "failed"
MISSING = "missing"
ERROR = "error"

T = TypeVar("T")


def describe(exc: BaseException) -> str:
    """One-line reason for a failed monitor: ``TypeName: message``."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def guarded(call: Callable[[], T], on_error: Callable[[str], T], what: str) -> T:
    """``call()``, or ``on_error(reason)`` (logged) if it raises: monitors never raise into pipelines."""
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - a monitor must report, not propagate
        reason = describe(exc)
        log.warning("monitor %s failed: %s", what, reason)
        return on_error(reason)


def is_null(value: Any) -> bool:
    """None, NaN (never a value in the contract) and pandas' NA/NaT count as null."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    try:
        import pandas as pd

        return value is pd.NA or value is pd.NaT
    except ImportError:  # pragma: no cover
        return False


def to_pandas(frame: Any) -> Any:
    """A pandas DataFrame (a copy) from pandas, a pyarrow Table/RecordBatch, a list of dicts or a dict of columns."""
    import pandas as pd

    if isinstance(frame, pd.DataFrame):
        return frame.copy(deep=False)
    to_pandas_method = getattr(frame, "to_pandas", None)
    if callable(to_pandas_method):  # pyarrow Table / RecordBatch
        return to_pandas_method()
    if isinstance(frame, (list, tuple)):
        return pd.DataFrame(list(frame))
    if isinstance(frame, dict):
        return pd.DataFrame(frame)
    raise TypeError(f"expected a pandas DataFrame, pyarrow Table, list of dicts or dict of columns, got {type(frame).__name__}")


def fmt_duration_ms(ms: int | None) -> str:
    """Compact human duration: ``45s``, ``12m05s``, ``3h02m``, ``2d04h``; ``-`` for None."""
    if ms is None:
        return "-"
    sign = "-" if ms < 0 else ""
    s = abs(int(ms)) // 1000
    if s < 60:
        return f"{sign}{s}s"
    if s < 3600:
        return f"{sign}{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{sign}{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{sign}{s // 86400}d{s % 86400 // 3600:02d}h"


def format_table(header: list[str], rows: list[list[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(c) for c in header]] + [[("-" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
