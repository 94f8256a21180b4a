"""Data quality: a view's expectations checked over a frame (embedded), a Spark DataFrame (batch runs)
or a sample of served values (streaming output); results stored in Iceberg; a materialization gate.

Checks (nulls are None, NaN or NA; a missing column fails every check on it):

============== ========================================= =================================
check          observed                                  passes when
============== ========================================= =================================
not_null       number of null values                     observed == 0
range          number of non-null values outside [min,max] observed == 0
allowed_values number of non-null values not in the list observed == 0
max_null_rate  nulls / rows (0 for no rows)              observed <= rate
============== ========================================= =================================

For materialization (batch_jobs)::

    report = check_spark(view, new_rows_df, run_id=run, day=day)
    store_results(catalog, report)          # never raises; returns False if it could not write
    if not gate(report, view):              # False: a check failed and the view blocks on failures
        ...skip writing this run to Redis...
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Callable, Sequence

from skewless.core.dsl import Check, Expectation, View
from skewless.monitoring.common import ERROR, FAILED, OK, format_table, guarded, log, to_pandas

RESULTS_NAMESPACE = "monitoring"
RESULTS_TABLE = "quality_results"
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class CheckResult:
    """One expectation evaluated over one frame."""

    expectation: str  # e.g. "range(customer_ltv_365d, min=0)"
    feature: str
    check: str
    observed: float | None
    passed: bool
    detail: str = ""


@dataclass(frozen=True)
class CheckReport:
    """All expectations of one view over one frame. ``status``: ok, failed or error (the monitor broke)."""

    run_id: str
    view: str
    version: int
    rows: int
    results: tuple[CheckResult, ...]
    day: date | None = None
    checked_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    error: str = ""

    @property
    def status(self) -> str:
        if self.error:
            return ERROR
        return OK if all(r.passed for r in self.results) else FAILED

    @property
    def passed(self) -> bool:
        return self.status == OK

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    def render(self) -> str:
        head = f"quality {self.view} v{self.version} run {self.run_id}: {self.rows} rows, status {self.status}"
        if self.error:
            return f"{head}: {self.error}"
        table = format_table(["expectation", "observed", "passed", "detail"],
                             [[r.expectation, _fmt(r.observed), "yes" if r.passed else "NO", r.detail] for r in self.results])
        return f"{head}\n{table}"


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return str(int(v)) if float(v).is_integer() else f"{v:.4g}"


def expectation_label(e: Expectation) -> str:
    check = Check(e.check)
    if check is Check.RANGE:
        bounds = ", ".join(f"{k}={e.arg(k)!r}" for k in ("min", "max") if e.arg(k) is not None)
        return f"range({e.feature}{', ' + bounds if bounds else ''})"
    if check is Check.ALLOWED_VALUES:
        return f"allowed_values({e.feature}, {list(e.arg('values') or ())!r})"
    if check is Check.MAX_NULL_RATE:
        return f"max_null_rate({e.feature}, {e.arg('rate')})"
    return f"{check.value}({e.feature})"


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def _error_report(view: View, run_id: str | None, day: date | None, reason: str) -> CheckReport:
    return CheckReport(run_id or new_run_id(), getattr(view, "name", "?"), int(getattr(view, "version", 0) or 0),
                       0, (), day=day, error=reason)


def _plain(v: Any) -> Any:
    """A numpy scalar as the Python value (for readable details)."""
    item = getattr(v, "item", None)
    return item() if callable(item) and not isinstance(v, (str, bytes)) else v


# --- pandas / Arrow ------------------------------------------------------------------------------------


def _null_mask(series: Any) -> Any:
    import pandas as pd

    mask = series.isna()
    if series.dtype == object:  # float('nan') inside object columns is caught by isna; pd.NA too
        mask = mask | series.map(lambda v: isinstance(v, float) and v != v)
    return mask.astype(bool) if not isinstance(mask, pd.Series) else mask


def _evaluate_pandas(e: Expectation, df: Any) -> CheckResult:
    label, check = expectation_label(e), Check(e.check)
    if e.feature not in df.columns:
        return CheckResult(label, e.feature, check.value, None, False, f"column {e.feature!r} missing")
    col = df[e.feature]
    nulls = _null_mask(col)
    n_null = int(nulls.sum())
    values = col[~nulls]
    if check is Check.NOT_NULL:
        return CheckResult(label, e.feature, check.value, float(n_null), n_null == 0, f"{n_null} of {len(col)} null")
    if check is Check.MAX_NULL_RATE:
        rate = n_null / len(col) if len(col) else 0.0
        limit = float(e.arg("rate"))
        return CheckResult(label, e.feature, check.value, rate, rate <= limit, f"{n_null} of {len(col)} null")
    if check is Check.RANGE:
        lo, hi = e.arg("min"), e.arg("max")
        bad = values.map(lambda v: (lo is not None and v < lo) or (hi is not None and v > hi)) if len(values) else values
        n_bad = int(bad.sum()) if len(values) else 0
        seen = f"min {_plain(values.min())!r}, max {_plain(values.max())!r}" if len(values) else "no values"
        return CheckResult(label, e.feature, check.value, float(n_bad), n_bad == 0, f"{n_bad} outside; {seen}")
    allowed = set(e.arg("values") or ())
    bad_values = values[~values.map(lambda v: v in allowed)] if len(values) else values
    examples = sorted({repr(_plain(v)) for v in bad_values.tolist()})[:MAX_EXAMPLES]
    detail = f"{len(bad_values)} not allowed" + (f", e.g. {', '.join(examples)}" if examples else "")
    return CheckResult(label, e.feature, check.value, float(len(bad_values)), len(bad_values) == 0, detail)


def check_dataframe(view: View, frame: Any, *, run_id: str | None = None, day: date | None = None,
                    expectations: Sequence[Expectation] | None = None) -> CheckReport:
    """Evaluate ``view``'s expectations (or the given ones) over a pandas DataFrame, a pyarrow Table or a
    list of row dicts. The frame is not modified. Never raises: a failure gives status ``error``."""

    def compute() -> CheckReport:
        exps = tuple(view.expectations if expectations is None else expectations)
        needed = list(dict.fromkeys(e.feature for e in exps))
        data = frame
        if hasattr(data, "column_names") and hasattr(data, "select"):  # Arrow: convert only checked columns
            data = data.select([c for c in needed if c in data.column_names])
        df = to_pandas(data)
        results = tuple(_evaluate_pandas(e, df) for e in exps)
        return CheckReport(run_id or new_run_id(), view.name, int(view.version), len(df), results, day=day)

    return guarded(compute, lambda reason: _error_report(view, run_id, day, reason), f"quality of {view.name}")


# --- Spark ------------------------------------------------------------------------------------------------


def check_spark(view: View, sdf: Any, *, run_id: str | None = None, day: date | None = None,
                expectations: Sequence[Expectation] | None = None) -> CheckReport:
    """Evaluate expectations over a Spark DataFrame in one aggregation pass (null counts, range violations,
    disallowed values, min/max). Never raises: a failure gives status ``error``."""

    def compute() -> CheckReport:
        from pyspark.sql import functions as F
        from pyspark.sql.types import DoubleType, FloatType

        exps = tuple(view.expectations if expectations is None else expectations)
        columns = set(sdf.columns)
        types = {f.name: f.dataType for f in sdf.schema.fields}

        def null_cond(name: str) -> Any:
            c = F.col(f"`{name}`")
            if isinstance(types[name], (DoubleType, FloatType)):
                return c.isNull() | F.isnan(c)
            return c.isNull()

        aggs = [F.count(F.lit(1)).alias("__rows")]
        for i, e in enumerate(exps):
            if e.feature not in columns:
                continue
            check, c = Check(e.check), F.col(f"`{e.feature}`")
            nulls = null_cond(e.feature)
            if check in (Check.NOT_NULL, Check.MAX_NULL_RATE):
                aggs.append(F.sum(F.when(nulls, 1).otherwise(0)).alias(f"__e{i}"))
            elif check is Check.RANGE:
                lo, hi = e.arg("min"), e.arg("max")
                cond = F.lit(False)
                if lo is not None:
                    cond = cond | (c < F.lit(lo))
                if hi is not None:
                    cond = cond | (c > F.lit(hi))
                aggs.append(F.sum(F.when(~nulls & cond, 1).otherwise(0)).alias(f"__e{i}"))
                aggs.append(F.min(F.when(~nulls, c)).alias(f"__min{i}"))
                aggs.append(F.max(F.when(~nulls, c)).alias(f"__max{i}"))
            else:
                allowed = list(e.arg("values") or ())
                bad = ~nulls & ~c.isin(allowed) if allowed else ~nulls
                aggs.append(F.sum(F.when(bad, 1).otherwise(0)).alias(f"__e{i}"))
                aggs.append(F.slice(F.collect_set(F.when(bad, c.cast("string"))), 1, MAX_EXAMPLES).alias(f"__x{i}"))
        row = sdf.agg(*aggs).collect()[0].asDict()
        n = int(row["__rows"])
        results = []
        for i, e in enumerate(exps):
            label, check = expectation_label(e), Check(e.check)
            if e.feature not in columns:
                results.append(CheckResult(label, e.feature, check.value, None, False, f"column {e.feature!r} missing"))
                continue
            k = int(row[f"__e{i}"] or 0)
            if check is Check.NOT_NULL:
                results.append(CheckResult(label, e.feature, check.value, float(k), k == 0, f"{k} of {n} null"))
            elif check is Check.MAX_NULL_RATE:
                rate = k / n if n else 0.0
                results.append(CheckResult(label, e.feature, check.value, rate, rate <= float(e.arg("rate")), f"{k} of {n} null"))
            elif check is Check.RANGE:
                lo, hi = row[f"__min{i}"], row[f"__max{i}"]
                seen = f"min {lo!r}, max {hi!r}" if lo is not None else "no values"
                results.append(CheckResult(label, e.feature, check.value, float(k), k == 0, f"{k} outside; {seen}"))
            else:
                examples = sorted(repr(x) for x in (row[f"__x{i}"] or []))
                detail = f"{k} not allowed" + (f", e.g. {', '.join(examples)}" if examples else "")
                results.append(CheckResult(label, e.feature, check.value, float(k), k == 0, detail))
        return CheckReport(run_id or new_run_id(), view.name, int(view.version), n, tuple(results), day=day)

    return guarded(compute, lambda reason: _error_report(view, run_id, day, reason), f"spark quality of {view.name}")


# --- gate ---------------------------------------------------------------------------------------------------


def gate(report: CheckReport, view: View | None = None, *, block_on_error: bool = False) -> bool:
    """True when the run may be materialized: every check passed, or the view does not block on failed
    checks (``block_materialization_on_failed_checks=False``). A report with status ``error`` (the monitor
    itself failed) lets the run through unless ``block_on_error``: monitoring never stops a pipeline by
    its own failure. ``view=None`` blocks on any failed check."""
    if report.status == ERROR:
        if block_on_error:
            log.error("quality gate: %s v%s blocked: monitor error %s", report.view, report.version, report.error)
        return not block_on_error
    if report.passed:
        return True
    blocks = True if view is None else bool(getattr(view, "block_materialization_on_failed_checks", True))
    names = ", ".join(r.expectation for r in report.failures)
    if blocks:
        log.error("quality gate: %s v%s run %s blocked by failed checks: %s", report.view, report.version, report.run_id, names)
    else:
        log.warning("quality gate: %s v%s run %s has failed checks (not blocking): %s", report.view, report.version,
                    report.run_id, names)
    return not blocks


def materialization_gate(catalog: Any = None, *, store: bool = True, block_on_error: bool = False) -> Callable[[View, date, Any], bool]:
    """A ``quality_gate(view, day, rows)`` hook for ``batch_jobs.materialize``: checks the run's rows (Arrow
    table or pandas frame) against the view's expectations, stores the results in ``catalog`` (when given and
    ``store``), and returns False when a check failed. The materializer then blocks or warns according to
    the view's ``block_materialization_on_failed_checks``. Never raises; a broken monitor returns True
    unless ``block_on_error``."""

    def hook(view: View, day: date, rows: Any) -> bool:
        # Only what the run computed: stream-served features are not in a batch run's rows (checking them here
        # would read them as all-null and block every materialization of a view with expectations on them).
        columns = set(getattr(rows, "column_names", None) or getattr(rows, "columns", ()))
        exps = [e for e in view.expectations if e.feature in columns]
        report = check_dataframe(view, rows, run_id=f"{view.name}-v{view.version}-{day}-{new_run_id()[:8]}", day=day,
                                 expectations=exps)
        if catalog is not None and store:
            store_results(catalog, report)
        return gate(report, None, block_on_error=block_on_error)

    return hook


# --- storage --------------------------------------------------------------------------------------------------


def results_schema() -> Any:
    from pyiceberg.schema import Schema
    from pyiceberg.types import BooleanType, DateType, DoubleType, IntegerType, LongType, NestedField, StringType, TimestamptzType

    return Schema(
        NestedField(1, "run_id", StringType(), required=False),
        NestedField(2, "view", StringType(), required=False),
        NestedField(3, "version", IntegerType(), required=False),
        NestedField(4, "day", DateType(), required=False),
        NestedField(5, "expectation", StringType(), required=False),
        NestedField(6, "feature", StringType(), required=False),
        NestedField(7, "check", StringType(), required=False),
        NestedField(8, "observed", DoubleType(), required=False),
        NestedField(9, "passed", BooleanType(), required=False),
        NestedField(10, "detail", StringType(), required=False),
        NestedField(11, "rows", LongType(), required=False),
        NestedField(12, "status", StringType(), required=False),
        NestedField(13, "checked_at", TimestamptzType(), required=False),
    )


def results_table(catalog: Any) -> Any:
    """The Iceberg table ``monitoring.quality_results`` (created on first use)."""
    ident = f"{RESULTS_NAMESPACE}.{RESULTS_TABLE}"
    try:
        catalog.create_namespace(RESULTS_NAMESPACE)
    except Exception:  # noqa: BLE001 - already exists (exception type differs between catalogs)
        pass
    try:
        return catalog.load_table(ident)
    except Exception:  # noqa: BLE001 - NoSuchTableError
        try:
            return catalog.create_table(ident, schema=results_schema())
        except Exception:  # noqa: BLE001 - created concurrently
            return catalog.load_table(ident)


def report_rows(report: CheckReport) -> list[dict[str, Any]]:
    """One row per result (one row with the error for a failed monitor)."""
    base = dict(run_id=report.run_id, view=report.view, version=report.version, day=report.day, rows=report.rows,
                status=report.status, checked_at=report.checked_at)
    if report.error:
        return [dict(base, expectation=None, feature=None, check=None, observed=None, passed=None, detail=report.error)]
    return [dict(base, expectation=r.expectation, feature=r.feature, check=r.check, observed=r.observed, passed=r.passed,
                 detail=r.detail) for r in report.results]


def store_results(catalog: Any, report: CheckReport) -> bool:
    """Append the report to ``monitoring.quality_results``; True if written. Never raises."""

    def write() -> bool:
        import pyarrow as pa

        table = results_table(catalog)
        arrow_schema = table.schema().as_arrow()
        rows = report_rows(report)
        data = pa.Table.from_pylist(rows, schema=arrow_schema)
        table.append(data)
        return True

    return guarded(write, lambda reason: False, f"storing quality results of {report.view}")


def read_results(catalog: Any, view: str | None = None) -> Any:
    """Stored results as a pandas DataFrame (optionally of one view)."""
    from pyiceberg.expressions import EqualTo

    table = results_table(catalog)
    scan = table.scan(row_filter=EqualTo("view", view)) if view else table.scan()
    return scan.to_pandas()


# --- streaming output, sampled ---------------------------------------------------------------------------------


def sample_online(view: View, entity_keys: Sequence[Any], read: Callable[[Any], Any], n: int = 100,
                  seed: int | None = None) -> Any:
    """Read ``n`` randomly chosen entities through ``read(entity_key)`` (any online reader: it returns a
    mapping feature -> value, or -> (value, status)) and return them as a pandas DataFrame, one row per
    entity, with the entity key in column ``__entity`` and statuses in ``__status:<feature>``.
    Values with status ``incomplete`` or ``expired`` are dropped (null by contract, not a data problem)."""
    import pandas as pd

    keys = list(entity_keys)
    rng = random.Random(seed)
    chosen = keys if len(keys) <= n else rng.sample(keys, n)
    rows = []
    for key in chosen:
        got = read(key) or {}
        row: dict[str, Any] = {"__entity": key}
        for name in view.feature_names:
            item = got.get(name)
            if isinstance(item, tuple) and len(item) == 2:
                value, status = item
                row[f"__status:{name}"] = status
                if status in ("incomplete", "expired"):
                    continue
                row[name] = value
            else:
                row[name] = item
        rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else ["__entity", *view.feature_names])


def check_online_sample(view: View, entity_keys: Sequence[Any], read: Callable[[Any], Any], n: int = 100,
                        seed: int | None = None, run_id: str | None = None) -> CheckReport:
    """Continuous check of the streaming output: :func:`sample_online` then :func:`check_dataframe`.
    NOT_NULL and null-rate checks skip values the reader marked ``incomplete``/``expired``. Never raises."""

    def compute() -> CheckReport:
        df = sample_online(view, entity_keys, read, n=n, seed=seed)
        exps = []
        for e in view.expectations:
            if Check(e.check) in (Check.NOT_NULL, Check.MAX_NULL_RATE) and f"__status:{e.feature}" in df.columns:
                known = df[~df[f"__status:{e.feature}"].isin(["incomplete", "expired"])]
                exps.append((e, known))
            else:
                exps.append((e, df))
        results = tuple(r for e, frame in exps for r in check_dataframe(view, frame, expectations=[e]).results)
        return CheckReport(run_id or new_run_id(), view.name, int(view.version), len(df), results)

    return guarded(compute, lambda reason: _error_report(view, run_id, None, reason), f"online sample of {view.name}")

