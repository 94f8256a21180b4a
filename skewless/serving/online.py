"""``get_online_features``: values, per-value status and age, and source progress from Redis in ONE round trip.

Reads follow docs/semantics.md §10-§11 with the keys of :mod:`skewless.core.layout`:

- feature views: stream tiles and batch parts merged through the shared laws (tests check equality with the
  reference reader, ``tests/support/reference_reader.py``, on generated stores), derived features on the merged
  values at the same instant (:mod:`skewless.core.expr`); ``stale`` for a read at "now" when the time the source is
  applied up to (its partition furthest behind) is older than the view's SLA (:mod:`skewless.core.staleness`, the monitor's rule too);
- snapshot views: the stored latest row, TTL enforced exactly as offline (``expired`` -> null); a stored row
  not yet visible at the instant read (``ts`` or ``created_at`` after it) is ``incomplete``;
- ``incomplete`` for every value when the store's epoch is missing or differs from the record's.

Everything a call needs (keys, laws, derived order) is planned once per feature selection and cached; a call
packs one pipeline (epoch, progress, view metas, then per view and entity one command on the entity's hash: HGETALL
for a feature view, HMGET of the row and manifest for a snapshot view; on a Redis Cluster one pipelined exchange per
master involved, :class:`~skewless.serving.transport.ClusterExchange`) and
evaluates only requested features. A part of an entity hash that its manifest lists but the hash lacks (a lost tile,
batch record or snapshot row) reads ``incomplete`` where it feeds; a Redis whose ``maxmemory-policy`` may evict keys is
refused on the first read (:func:`skewless.core.layout.check_eviction_policy`).

The store's public parts: the plan :mod:`skewless.serving.read_plan`, the evaluation of the replies
:mod:`skewless.serving.evaluate` (with the store's :class:`~skewless.serving.evaluate.ReadCaches`), the round trip
:mod:`skewless.serving.transport` (and :mod:`skewless.serving.reply_stream`).
"""

from __future__ import annotations

import html
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping, Sequence

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError as RedisResponseError

from skewless.config import ConfigError, RedisTarget, default_project, redis_target
from skewless.profile import load_profile
from skewless.core import laws, layout
from skewless.core.admission import MalformedError, parse_event_time
from skewless.core.dsl import FeatureService, KeyType
from skewless.core.repo import Repository, load_repository
from skewless.core.staleness import EXPIRED, INCOMPLETE, PRESENT, STALE, STATUS_SUFFIX, is_stale, newest_applied_ms, parse_progress
from skewless.core.schemas import pandas_dtype
from skewless.core.timeutil import iso_ms, to_epoch_ms
from skewless.engines.redis_client import check_online_store, is_cluster, open_redis
from skewless.serving.errors import AsOfNotAligned, OnlineRequestError
from skewless.serving.evaluate import (CACHE_MAX, DEFAULT_CACHE_BYTES, ENTRY_OVERHEAD, ReadCaches, as_dict, loads,
                                       snapshots, view_meta, warn_corrupt, window_context, windowed)
from skewless.serving.read_plan import EntitySpec, ReadPlan, active_versions, build_plan
from skewless.serving.reply_stream import ReplyStream
from skewless.serving.transport import STREAM_MIN, ClusterExchange, execute, round_trip, snapshot_replies

DEFAULT_MAX_ENTITIES = 1000
DEFAULT_MAX_KEY_LENGTH = 1024  # characters of a string join key value (SKEWLESS_SERVE_MAX_KEY_LENGTH)


def _env_positive_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(f"environment variable {name}={raw!r} is not a positive integer; unset it or give one")
    return value


def read_limits() -> tuple[int, int]:
    """``(max join-key length, cache bytes)`` of a store: ``SKEWLESS_SERVE_MAX_KEY_LENGTH`` (default 1024 characters)
    and ``SKEWLESS_SERVE_CACHE_BYTES`` (default 128 MiB); :class:`ConfigError` for a value that is not a positive int."""
    return (_env_positive_int("SKEWLESS_SERVE_MAX_KEY_LENGTH", DEFAULT_MAX_KEY_LENGTH),
            _env_positive_int("SKEWLESS_SERVE_CACHE_BYTES", DEFAULT_CACHE_BYTES))


# --- the response --------------------------------------------------------------------------------------------


@dataclass(repr=False)
class OnlineResponse:
    """The answer of one read. Column-major: ``values[column][i]`` is entity ``i``'s value of ``column``
    (``columns[j]`` is the output name of ``refs[j]``), with its ``statuses`` and ``ages_ms`` (the read
    instant minus the newest data time the value reflects: the time the stream is applied up to, batch cut-off
    of a batch-only source, snapshot row time; None when unknown). ``progress``: per streaming source and
    partition what was applied (offset, max event time, last write); ``batch_runs``: per view the batch runs
    (run id -> cut-off) the values include. ``found[view][i]``: whether the store holds any key of entity ``i``
    for ``view`` (False: no state, e.g. a mistyped or never-seen id; its values are still the contract's, such
    as COUNT 0). ``value_types``: per column its declared value type (``schemas.TYPES``), for :meth:`to_pandas`."""

    columns: tuple[str, ...]
    refs: tuple[str, ...]
    entities: dict[str, list[Any]]
    values: dict[str, list[Any]]
    statuses: dict[str, list[str]]
    ages_ms: dict[str, list[int | None]]
    now_ms: int
    as_of_ms: int | None
    progress_read: Mapping[str, Mapping[int, Mapping[str, Any]]] = field(default_factory=dict)  # shared: never changed
    batch_runs: dict[str, dict[str, int]] = field(default_factory=dict)
    found: dict[str, list[bool]] = field(default_factory=dict)
    value_types: tuple[str | None, ...] = ()
    versions: dict[str, int] = field(default_factory=dict)  # per view (or 'view@vN'): the version whose values these are

    @property
    def progress(self) -> dict[str, dict[int, dict[str, Any]]]:
        """Per streaming source and partition what was applied (the response's own copy, made on first use)."""
        copied = self.__dict__.get("_progress")
        if copied is None:
            copied = self.__dict__["_progress"] = {src: {p: dict(v) for p, v in parts.items()}
                                                   for src, parts in self.progress_read.items()}
        return copied

    def __len__(self) -> int:
        return len(next(iter(self.entities.values()), []))

    def row(self, i: int = 0) -> dict[str, Any]:
        """Plain values of entity ``i`` (by position in the request)."""
        return {c: self.values[c][i] for c in self.columns}

    def status(self, column: str, i: int = 0) -> str:
        return self.statuses[column][i]

    def not_found(self, i: int = 0) -> list[str]:
        """The views for which the store holds no state of entity ``i``."""
        return [view for view, flags in self.found.items() if not flags[i]]

    def view_columns(self) -> dict[str, list[str]]:
        """Per view (in request order) its output columns."""
        out: dict[str, list[str]] = {}
        for ref, column in zip(self.refs, self.columns):
            out.setdefault(ref.split(":", 1)[0], []).append(column)
        return out

    def view_statuses(self) -> dict[str, list[str]]:
        """Per view, per entity: the status of the entity's row of that view, as a training set's one status column
        per view reports it: ``incomplete`` if any requested feature of the view is, else ``expired``, else
        ``stale``, else ``present`` (each value's own status stays in :attr:`statuses`)."""
        n = len(self)
        out = {}
        for view, cols in self.view_columns().items():
            per_value = [self.statuses[c] for c in cols]
            out[view] = [_row_status({sts[i] for sts in per_value}) for i in range(n)]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the HTTP server's response body)."""
        return {
            "features": list(self.columns), "refs": list(self.refs), "entities": self.entities,
            "values": self.values, "statuses": self.statuses, "ages_ms": self.ages_ms,
            "now_ms": self.now_ms, "as_of_ms": self.as_of_ms,
            "progress": {s: {str(p): v for p, v in parts.items()} for s, parts in self.progress.items()},
            "batch_runs": self.batch_runs, "found": self.found, "versions": self.versions,
        }

    def to_pandas(self, statuses: str | bool | None = "view", found: bool = False) -> Any:
        """One row per entity, shaped as a training set (``get_historical_features``): the join keys, then per view
        its feature columns and one ``<view>__status`` column (:meth:`view_statuses`); each feature column has the
        dtype of its declared type (``schemas.PANDAS_DTYPES``: ``Int64``, ``Float64``, ``string``, ``boolean``;
        decimals as objects; null stays null). ``statuses="feature"``: the columns in request order, each value's
        own status in a ``<column>__status`` column after its column; ``None`` (or False): no status columns.
        ``found=True`` adds a boolean ``<view>__found`` column per view."""
        import pandas as pd

        if statuses is True:
            statuses = "view"
        if statuses not in ("view", "feature", None, False):
            raise ValueError(f"statuses={statuses!r}: use 'view' (one status column per view, as training sets), "
                             "'feature' (one per feature) or None")
        types = dict(zip(self.columns, self.value_types))
        data: dict[str, Any] = dict(self.entities)

        def add(c: str) -> None:
            dtype = pandas_dtype(types.get(c))
            data[c] = pd.array(self.values[c], dtype=dtype) if dtype is not None else self.values[c]
            if statuses == "feature":
                data[f"{c}{STATUS_SUFFIX}"] = pd.array(self.statuses[c], dtype="string")

        if statuses == "view":  # as a training set: per view (in request order) its columns, then its status
            view_statuses = self.view_statuses()
            for view, cols in self.view_columns().items():
                for c in cols:
                    add(c)
                data[f"{view}{STATUS_SUFFIX}"] = pd.array(view_statuses[view], dtype="string")
        else:
            for c in self.columns:
                add(c)
        if found:
            for view, flags in self.found.items():
                data[f"{view}__found"] = pd.array(flags, dtype="boolean")
        frame = pd.DataFrame(data)
        frame.attrs["versions"] = dict(self.versions)  # per view, the version served (docs/serving.md)
        return frame

    # -- for people ----------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for c in self.columns:
            for st in self.statuses[c]:
                counts[st] = counts.get(st, 0) + 1
        n, k = len(self), len(self.columns)
        at = "" if self.as_of_ms is None else f" as_of {iso_ms(self.as_of_ms)}"
        text = ", ".join(f"{st} {counts[st]}" for st in sorted(counts, key=_rank, reverse=True)) or "none"
        missing = [f"{view} {flags.count(False)}" for view, flags in self.found.items() if not all(flags)]
        return (f"<OnlineResponse {n} entit{'y' if n == 1 else 'ies'} x {k} feature{'' if k == 1 else 's'}{at}; "
                f"statuses: {text}; not found: {', '.join(missing) if missing else 'none'}>")

    def _table(self, limit: int = 8) -> tuple[list[str], list[list[str]], int]:
        """``(header, rows, entities left out)``: one row per feature and one column per entity (the first
        ``limit``); a value not ``present`` shows its status, a last row names the views without state."""
        n = len(self)
        shown = range(min(n, limit))
        keys = list(self.entities)
        header = ["feature"] + [",".join(f"{k}={self.entities[k][i]}" for k in keys) for i in shown]
        rows = []
        for c in self.columns:
            cells = [c]
            for i in shown:
                v, st = self.values[c][i], self.statuses[c][i]
                text = "null" if v is None else str(v)
                cells.append(text if st == PRESENT else f"{text} ({st})")
            rows.append(cells)
        rows.append(["not found in"] + [", ".join(self.not_found(i)) or "-" for i in shown])
        return header, rows, n - len(shown)

    def __str__(self) -> str:
        header, rows, more = self._table()
        widths = [min(40, max(len(r[j]) for r in [header] + rows)) for j in range(len(header))]
        lines = [repr(self)] + ["  ".join(cell[:40].ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header] + rows]
        if more:
            lines.append(f"... and {more} more entities (to_pandas() has all)")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        header, rows, more = self._table()
        cell = "<td>{}</td>".format
        body = "".join("<tr>" + "".join(cell(html.escape(x)) for x in r) + "</tr>" for r in rows)
        head = "".join(f"<th>{html.escape(x)}</th>" for x in header)
        tail = f"<p>... and {more} more entities (to_pandas() has all)</p>" if more else ""
        return f"<p>{html.escape(repr(self))}</p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{tail}"


_RANKS = {INCOMPLETE: 0, EXPIRED: 1, STALE: 2, PRESENT: 3}  # a row's status: the lowest rank of its values'


def _rank(status: str) -> int:
    return _RANKS.get(status, -1)  # a status not listed here is never hidden behind a listed one


def _row_status(statuses: set[str]) -> str:
    return min(statuses, key=_rank) if statuses else PRESENT


# --- the store -------------------------------------------------------------------------------------------------


class OnlineStore:
    """Online reads of one repository from one Redis (or Redis Cluster) client.

    ``max_entities`` bounds a request (None: unbounded); ``max_key_length`` the characters of a string join key
    value (None: ``SKEWLESS_SERVE_MAX_KEY_LENGTH`` or 1024); ``cache_bytes`` the value caches together (None:
    ``SKEWLESS_SERVE_CACHE_BYTES`` or 128 MiB); ``sampler`` (a :class:`skewless.monitoring.sampling.ValueSampler`)
    observes served values per view.
    """

    def __init__(self, repo: Repository, redis_client: Any, project: str | None = None, *,
                 max_entities: int | None = None, sampler: Any = None, max_key_length: int | None = None,
                 cache_bytes: int | None = None) -> None:
        self.repo = repo
        self.client = redis_client
        self.project = project or default_project()
        self.max_entities = max_entities
        self.sampler = sampler
        self._plans: dict[Any, ReadPlan] = {}
        self._lock = threading.Lock()
        self._epoch_key = layout.epoch_key(self.project).encode()
        self._fast = hasattr(redis_client, "connection_pool") and not hasattr(redis_client, "get_nodes")
        self._cluster = ClusterExchange(redis_client) if is_cluster(redis_client) else None
        self._conns: list[Any] = []  # connections taken from the client's pool, free for the next call (emptied in a
        _STORES.add(self)  # forked child: the parent's sockets are not its own, see _forget_connections_after_fork)
        if max_key_length is None or cache_bytes is None:
            env_key_length, env_cache_bytes = read_limits()
            max_key_length, cache_bytes = max_key_length or env_key_length, cache_bytes or env_cache_bytes
        self.max_key_length = max_key_length
        self.caches = ReadCaches(max_bytes=cache_bytes)
        self._policy_checked = False  # the server's maxmemory-policy (and the store's kind), checked on the first read
        self.target: RedisTarget | None = None  # where the client points (open_store), for the first read's check

    # -- planning ------------------------------------------------------------------------------------------

    def plan(self, features: Any) -> ReadPlan:
        """The cached plan of a feature selection."""
        key = features.name if isinstance(features, FeatureService) else (
            features if isinstance(features, str) else tuple(features) if isinstance(features, (list, tuple)) else None)
        if key is not None:
            try:
                plan = self._plans.get(key)
            except TypeError:  # unhashable items: not a valid selection; build_plan says why
                plan, key = None, None
            if plan is not None:
                return plan
        plan = build_plan(self.repo, self.project, features)
        if key is not None:
            with self._lock:
                if len(self._plans) > 1024:
                    self._plans.clear()
                self._plans[key] = plan
        return plan

    # -- entities ------------------------------------------------------------------------------------------

    def _entity_columns(self, plan: ReadPlan, entity_rows: Any) -> tuple[dict[str, list[Any]], int]:
        t = type(entity_rows)
        if (t is list or t is tuple) and len(entity_rows) == 1 and type(entity_rows[0]) is dict \
                and len(plan.join_keys) == 1 == len(entity_rows[0]) and plan.join_keys[0] in entity_rows[0]:  # the common one-entity call
            key = plan.join_keys[0]
            return {key: [entity_rows[0][key]]}, 1
        if t is dict and len(entity_rows) == 1 and len(plan.join_keys) == 1 and plan.join_keys[0] in entity_rows:
            key = plan.join_keys[0]
            v = entity_rows[key]
            if type(v) is list and (self.max_entities is None or len(v) <= self.max_entities):
                return {key: list(v)}, len(v)
        if hasattr(entity_rows, "columns") and hasattr(entity_rows, "to_dict"):  # pandas
            cols = {str(c): entity_rows[c].tolist() for c in entity_rows.columns}
        elif isinstance(entity_rows, Mapping):
            cols = {}
            for k, v in entity_rows.items():
                if not isinstance(v, (list, tuple)):
                    raise OnlineRequestError(f"entities[{k!r}] must be a list of values, got {type(v).__name__}")
                cols[k] = list(v)
        elif isinstance(entity_rows, (list, tuple)):
            cols = {k: [] for k in plan.join_keys}
            nkeys = len(plan.join_keys)
            for i, row in enumerate(entity_rows):
                if not isinstance(row, Mapping):
                    raise OnlineRequestError(f"entity row {i} must be a mapping of join key -> value, got {type(row).__name__}")
                if len(row) != nkeys:
                    _refuse_extra_keys(plan, row, f"entity row {i}")
                for k in plan.join_keys:
                    if k not in row:
                        raise OnlineRequestError(f"entity row {i} lacks join key {k!r} (needed: {list(plan.join_keys)})")
                    cols[k].append(row[k])
        else:
            raise OnlineRequestError("entity_rows must be a list of dicts, a dict of join key -> list, or a DataFrame")
        if len(cols) != len(plan.join_keys):
            _refuse_extra_keys(plan, cols, "entities")
        missing = [k for k in plan.join_keys if k not in cols]
        if missing:
            raise OnlineRequestError(f"entities lack join key(s) {missing}; the requested views need {list(plan.join_keys)}"
                                     + (f", got {sorted(cols)}" if cols else ""))
        lengths = {len(cols[k]) for k in plan.join_keys}
        if len(lengths) > 1:
            raise OnlineRequestError(f"entity key lists differ in length: "
                                     f"{ {k: len(cols[k]) for k in plan.join_keys} }")
        n = lengths.pop() if lengths else 0
        if self.max_entities is not None and n > self.max_entities:
            raise OnlineRequestError(f"{n} entities requested; the limit is {self.max_entities} per request")
        return {k: cols[k] for k in plan.join_keys}, n

    @staticmethod
    def _tags(spec: EntitySpec, cols: Mapping[str, list[Any]], n: int, max_len: int) -> list[bytes]:
        parts_per_key = []
        for name, ktype in spec.keys:
            values = cols[name]
            if ktype is KeyType.STRING:
                if n == 1 and len(spec.keys) == 1 and type(values[0]) is str and len(values[0]) <= max_len:
                    v = values[0]
                    return [("s=" + (v.translate(layout.ESCAPE_TABLE) if layout.needs_escape(v) else v)).encode()]
                if set(map(type, values)) - {str}:
                    for i, v in enumerate(values):
                        if type(v) is not str:
                            raise OnlineRequestError(f"join key {name!r} is a string; entity {i} has {v!r} ({type(v).__name__})")
                if values and max(map(len, values)) > max_len:
                    i = next(i for i, v in enumerate(values) if len(v) > max_len)
                    raise OnlineRequestError(f"join key {name!r} of entity {i} has {len(values[i])} characters; the limit is "
                                             f"{max_len} (SKEWLESS_SERVE_MAX_KEY_LENGTH)")
                joined = "\0".join(values)
                if len(spec.keys) == 1 and layout.needs_escape(joined) is None and joined.count("\0") == len(values) - 1:
                    return ("s=" + "\0s=".join(values)).encode().split(b"\0") if values else []  # one encode, one split
                out = ["s=" + v.translate(layout.ESCAPE_TABLE) for v in values]
            else:
                out = []
                for i, v in enumerate(values):
                    if type(v) is not int or not laws.INT64_MIN <= v <= laws.INT64_MAX:
                        raise OnlineRequestError(f"join key {name!r} is an int64; entity {i} has {v!r} ({type(v).__name__})")
                    out.append(f"i={v}")
            parts_per_key.append(out)
        if len(parts_per_key) == 1:
            return [p.encode() for p in parts_per_key[0]]
        return [",".join(p).encode() for p in zip(*parts_per_key)]

    # -- the read ------------------------------------------------------------------------------------------

    def get_online_features(self, entity_rows: Any, features: Any, *, as_of: int | datetime | str | None = None,
                            now_ms: int | None = None) -> OnlineResponse:
        """Values of ``features`` for ``entity_rows`` at "now" or at a tile-aligned ``as_of``, in one round trip."""
        if not self._policy_checked:
            if self.target is not None:  # a cluster named as one Redis (or the reverse), a master down: one line
                check_online_store(self.client, self.target)
            layout.check_eviction_policy(self.client, "online store")  # an evicting Redis is refused
            self._policy_checked = True
        plan = self.plan(features)
        cols, n = self._entity_columns(plan, entity_rows)
        now = int(time.time() * 1000) if now_ms is None else int(now_ms)
        as_of_ms = None if as_of is None else _as_of_ms(as_of)
        if as_of_ms is not None:
            for vp in plan.views:
                if as_of_ms % vp.step_ms:
                    before = as_of_ms - as_of_ms % vp.step_ms
                    raise AsOfNotAligned(
                        f"as_of {as_of_ms} is not a multiple of {vp.step_ms} ms (the tile sizes stored for {vp.view.name}): "
                        f"online reads are exact at aligned instants such as {before} or {before + vp.step_ms}; "
                        "use the training-set path (get_historical_features) for other instants")
        try:
            tags = [self._tags(spec, cols, n, self.max_key_length) for spec in plan.entities]
        except UnicodeEncodeError as exc:
            raise OnlineRequestError(f"a join key value is not valid Unicode text ({exc.reason} at position {exc.start}): "
                                     "send keys as UTF-8 strings") from None

        # one pipeline: epoch, progress per streaming source, meta per feature view, then the entities' keys
        if self._fast:
            packed_cache = self.caches.packed
            kinds = plan.one_kinds if n == 1 else list(plan.head_kinds)
            packed = [plan.head_packed]
            for vp in plan.views:
                if n != 1:
                    kinds += vp.kinds * n
                cache = packed_cache.get(vp.serial)  # entity tag -> the entity's packed commands of that view
                if cache is None or len(cache) >= CACHE_MAX:
                    cache = packed_cache[vp.serial] = {}
                if n == 1:  # one entity: its commands kept, or packed now
                    t = tags[vp.entity_index][0]
                    one = cache.get(t)
                    if one is None:
                        one = cache[t] = b"".join([piece % (c + len(t), t) for piece, c in vp.pieces])
                        self.caches.charge(len(t) + len(one) + ENTRY_OVERHEAD)
                    packed.append(one)
                    continue
                pieces = vp.pieces
                ones = list(map(cache.get, tags[vp.entity_index]))
                if None in ones:
                    for i, t in enumerate(tags[vp.entity_index]):
                        if ones[i] is None:
                            one = ones[i] = cache[t] = b"".join([piece % (c + len(t), t) for piece, c in pieces])
                            self.caches.charge(len(t) + len(one) + ENTRY_OVERHEAD)
                packed += ones
            return self._send(b"".join(packed), kinds, plan, cols, n, tags, now, as_of_ms)
        if self._cluster is not None:  # one pipelined exchange per master involved
            replies = self._cluster.read(plan, tags, n, self.caches)
            return self._evaluate(replies, None, plan, cols, n, tags, now, as_of_ms)
        names = list(plan.head_names)
        for vp in plan.views:
            names += [(cmd, vp.prefix + t + suffix) for t in tags[vp.entity_index] for cmd, suffix in vp.key_suffixes]
        return self._evaluate(execute(self.client, names), None, plan, cols, n, tags, now, as_of_ms)

    def _evaluate(self, replies: list[Any], stream: ReplyStream | None, plan: ReadPlan, cols: dict[str, list[Any]], n: int,
                  tags: list[list[bytes]], now: int, as_of_ms: int | None) -> OnlineResponse:
        """The response from the replies: all of them in ``replies``, or the shared ones there and the entities'
        still in ``stream`` (consumed view by view, entity by entity)."""
        nhead = len(plan.head_kinds)
        head = replies[:nhead]
        shared = plan.shared
        if shared is not None and shared[0] == head:  # the shared replies of the plan's last read: what they say is kept
            _, epoch, epoch_text, unreadable, metas, progress_parts, newest_event, newest_applied, inactive, versions = shared
            pos = nhead
        else:
            epoch = replies[0]
            unreadable = set()  # views read without the epoch (all incomplete): a shared key they need is corrupt
            if isinstance(epoch, Exception):
                warn_corrupt(self._epoch_key, f"{type(epoch).__name__}: {epoch}", "every view")
                epoch = None
            pos = 1
            progress_raw = {}
            for src, key in plan.sources:
                raw = replies[pos]
                pos += 1
                if isinstance(raw, Exception):
                    warn_corrupt(key, f"{type(raw).__name__}: {raw}", f"the views of source {src}")
                    unreadable.update(vp.serial for vp in plan.views if vp.stream and vp.progress_name == src)
                    raw = None
                progress_raw[src] = as_dict(raw)
            metas = {}
            for vp in plan.views:
                if not vp.snapshot:
                    raw = replies[pos]
                    pos += 1
                    try:
                        if isinstance(raw, Exception):
                            raise raw
                        metas[vp.serial] = view_meta(as_dict(raw))
                    except (ValueError, redis.RedisError) as exc:
                        warn_corrupt(vp.meta_key, f"{type(exc).__name__}: {exc}", f"view {vp.view.name}")
                        unreadable.add(vp.serial)
                        metas[vp.serial] = view_meta(None)
            inactive, versions = (), plan.versions
            if plan.choices:  # views declared in two versions: each read evaluates the one its record names
                inactive, versions = active_versions(plan, replies)
                pos += len(plan.choices)

            epoch_text = None if epoch is None else epoch.decode()
            progress_parts = {}
            newest_event = {}
            newest_applied = {}
            for src, raw in progress_raw.items():
                progress_parts[src], newest_event[src], newest_applied[src] = self._progress_info(raw, epoch_text)
            if not unreadable and pos == nhead and not any(isinstance(r, Exception) for r in head):  # kept when all read
                plan.shared = (head, epoch, epoch_text, unreadable, metas, progress_parts, newest_event, newest_applied,
                               inactive, versions)
        T = now if as_of_ms is None else as_of_ms
        ncol = len(plan.columns)
        values: list[list[Any]] = [_NO_LIST] * ncol  # every column is set by its view below
        statuses: list[list[str]] = [_NO_LIST] * ncol
        ages: list[list[int | None]] = [_NO_LIST] * ncol
        batch_runs: dict[str, dict[str, int]] = {}
        found: dict[str, list[bool]] = {}  # per view, per entity: does the store hold any key of it
        sampler = self.sampler
        caches = self.caches
        one_names = plan.one_names if n == 1 and not inactive else None  # one entity: the response's dicts filled
        if one_names is not None:  # view by view (the views' outputs are the columns in order)
            value_of: dict[str, list[Any]] = {}
            status_of: dict[str, list[str]] = {}
            age_of: dict[str, list[int | None]] = {}
        vi = -1
        for vp in plan.views:
            vi += 1
            k = vp.key_count()
            chunk = None
            if stream is None:
                chunk = replies[pos:pos + k * n]
                pos += k * n
            if inactive and vp.serial in inactive:  # the version of an upgrade its record does not name: not served
                if stream is not None:
                    stream.parse(k * n, measure=False)
                continue
            view_epoch = None if vp.serial in unreadable else epoch
            if vp.snapshot:
                if chunk is None:
                    chunk = snapshot_replies(vp, stream, tags[vp.entity_index], caches)  # type: ignore[arg-type]
                rows = snapshots(vp, chunk, epoch_text, T, caches, tags[vp.entity_index].__getitem__)
                found[vp.label] = [type(r) is list and (r[0] is not None or r[1] is not None) for r in chunk]
            else:
                stale = False
                age: int | None = None
                if vp.stream:
                    src = vp.progress_name
                    if as_of_ms is None:
                        stale = is_stale(newest_applied[src], now, vp.sla_ms)
                    newest = newest_event.get(src)
                    age = None if newest is None else max(0, T - newest)
                meta = metas[vp.serial]
                runs: dict[str, int] = {}
                # the context named by a number: memo keys hash one int, not its tuples
                starts, ctx_id = window_context(vp, T, now, as_of_ms, view_epoch, meta, caches.contexts)
                mstats = caches.memo_stats
                use_memo = mstats[2] <= 0
                if not use_memo:
                    mstats[2] -= n
                view_found: list[bool] = []
                found[vp.label] = view_found
                rows = windowed(caches, vp, chunk, n, k, view_epoch, meta, now, as_of_ms, stale, age, runs, starts, ctx_id,
                                tags[vp.entity_index], use_memo, stream, view_found)
                if runs:
                    batch_runs[vp.label] = runs
            if one_names is not None:
                row_vals, row_sts, row_age = rows[0]
                for c, v, st in zip(one_names[vi], row_vals, row_sts):
                    value_of[c] = [v]
                    status_of[c] = [st]
                    age_of[c] = [row_age]
            elif n == 1:
                row_vals, row_sts, row_age = rows[0]
                for j, v, st in zip(vp.out_columns, row_vals, row_sts):
                    values[j] = [v]
                    statuses[j] = [st]
                    ages[j] = [row_age]
            else:  # rows -> columns by transposing (C loops), each column its own list
                nout = len(vp.outputs)
                val_cols = list(zip(*[r[0] for r in rows])) or [()] * nout  # no entities: empty columns
                st_cols = list(zip(*[r[1] for r in rows])) or [()] * nout
                age_col = [r[2] for r in rows]
                for jo, (_, j) in enumerate(vp.outputs):
                    values[j] = list(val_cols[jo])
                    statuses[j] = list(st_cols[jo])
                    ages[j] = age_col[:]
            if sampler is not None:
                for row_vals, _, _ in rows:
                    sampler.observe(vp.view.name, {f: row_vals[jo] for jo, (f, _) in enumerate(vp.outputs)})
        if stream is not None:
            stream.finish()
        if one_names is None:
            value_of = dict(zip(plan.columns, values))
            status_of = dict(zip(plan.columns, statuses))
            age_of = dict(zip(plan.columns, ages))
        # positional: columns, refs, entities, values, statuses, ages_ms, now_ms, as_of_ms, progress_read, batch_runs,
        # found, value_types, versions (the dataclass's field order)
        return OnlineResponse(plan.columns, plan.refs, cols, value_of, status_of, age_of, now, as_of_ms, progress_parts,
                              batch_runs, found, plan.value_types, dict(versions))

    def _progress_info(self, raw: Mapping[bytes, bytes] | None, epoch_text: str | None
                       ) -> tuple[dict[int, dict[str, Any]], int | None, int | None]:
        """``(partitions, applied up to, applied up to)`` of a progress hash: the time the stream is applied up to
        (:func:`staleness.newest_applied_ms`, the partition furthest behind) is both the values' age and the staleness
        rule's input. Cached by its raw fields and the epoch (the same bytes give the same answer)."""
        key = (tuple(raw.items()) if raw else (), epoch_text)
        cache = self.caches.progress
        hit = cache.get(key)
        if hit is None:
            applied = newest_applied_ms(parse_progress(raw or {}), epoch_text)
            hit = (_progress(raw), applied, applied)
            if len(cache) >= 256:
                cache.clear()
            cache[key] = hit
        return hit

    # -- transport (one round trip on a kept connection; the rest in skewless.serving.transport) ----------------

    def _send(self, packed: bytes, kinds: Sequence[int], plan: ReadPlan, cols: dict[str, list[Any]], n: int,
              tags: list[list[bytes]], now: int, as_of_ms: int | None) -> OnlineResponse:
        """One round trip on a connection of a plain ``redis.Redis``, evaluated as the replies arrive: the packed
        commands in one write, replies per ``kinds`` (``K_GET`` bytes|None, ``K_HASH`` and ``K_TILES`` a dict or
        hiredis's flat list). On redis-py's hiredis parser the shared replies are parsed and the entities' are
        left in a :class:`ReplyStream`, where the memo passes over an entity whose raw replies are the kept ones.

        The store keeps the connections it took from the client's pool (one per concurrent caller, taken once):
        every call reads all its replies or disconnects, so the pool's per-checkout "unread data?" probe (a
        syscall) and its locking are not needed on every read. A kept connection the server closed meanwhile
        (restart, idle timeout) is retried once on a fresh socket, as the pool's probe would have reconnected."""
        conns = self._conns
        try:
            conn, kept = conns.pop(), True
        except IndexError:
            conn, kept = self.client.connection_pool.get_connection(), False
        try:
            nhead = len(plan.head_kinds)
            streamed = n >= STREAM_MIN
            try:
                replies, stream = round_trip(conn, packed, kinds, nhead, streamed)
            except RedisConnectionError:
                if not kept:
                    raise
                replies, stream = round_trip(conn, packed, kinds, nhead, streamed)  # connects anew
            except RedisResponseError:
                if not streamed:
                    raise
                # an error reply to a shared command (e.g. WRONGTYPE on the epoch key): read again, parsed whole,
                # where it is returned in its place (round_trip disconnected: nothing unread is left)
                replies, stream = round_trip(conn, packed, kinds, nhead, False)
            if stream is None:
                return self._evaluate(replies, None, plan, cols, n, tags, now, as_of_ms)
            try:
                response = self._evaluate(replies, stream, plan, cols, n, tags, now, as_of_ms)
            except BaseException as exc:
                conn.disconnect()  # replies left unread must not reach the next command
                if not isinstance(exc, RedisResponseError):
                    raise
                # an error reply in the stream (e.g. WRONGTYPE on one entity's key): read again, parsed whole, where
                # an entity's error reply marks only that entity incomplete
                replies, _ = round_trip(conn, packed, kinds, nhead, False)
                return self._evaluate(replies, None, plan, cols, n, tags, now, as_of_ms)
            if conn.health_check_interval:
                conn.next_health_check = time.time() + conn.health_check_interval
            return response
        finally:
            conns.append(conn)


_NO_LIST: list = []
_STORES: weakref.WeakSet[OnlineStore] = weakref.WeakSet()  # the process's stores, whose kept connections a fork drops


def _forget_connections_after_fork() -> None:
    """In a forked child: every store's kept connections are the parent's sockets, never used here (the child's first
    read takes a new one from the client's pool, which redis-py resets after a fork)."""
    for store in list(_STORES):
        store._conns = []


os.register_at_fork(after_in_child=_forget_connections_after_fork)


def _refuse_extra_keys(plan: ReadPlan, given: Mapping[Any, Any], where: str) -> None:
    """OnlineRequestError naming the keys of ``given`` the requested views do not take (none: returns)."""
    extra = [k for k in given if k not in plan.join_keys]
    if extra:
        raise OnlineRequestError(f"{where} has key(s) {sorted(map(str, extra))} that no requested view takes; "
                                 f"give only {list(plan.join_keys)}")


def _as_of_ms(as_of: Any) -> int:
    if isinstance(as_of, bool):
        raise OnlineRequestError(f"as_of must be epoch ms, an ISO-8601 string with a zone or a datetime, got {as_of!r}")
    if isinstance(as_of, str):
        try:
            return parse_event_time(as_of)
        except MalformedError as exc:
            raise OnlineRequestError(f"as_of: {exc}") from None
    if isinstance(as_of, int):
        if not 0 <= as_of <= laws.INT64_MAX:
            raise OnlineRequestError(f"as_of {as_of} is out of range")
        return as_of
    try:
        return to_epoch_ms(as_of)
    except Exception:  # noqa: BLE001 - anything else is the caller's mistake
        raise OnlineRequestError(f"as_of must be epoch ms, an ISO-8601 string with a zone or a datetime, got {as_of!r}") from None


def _progress(raw: Mapping[bytes, bytes] | None) -> dict[int, dict[str, Any]]:
    out = {}
    for k, v in (raw or {}).items():
        if k.startswith(b"p:"):
            try:
                out[int(k[2:])] = loads(v)
            except ValueError:
                continue
    return out


def open_store(repo: Repository | str = "feature_defs", redis_url: str | None = None, *, project: str | None = None,
               password: str | None = None, tls: bool = False, profile_name: str | None = None, **kwargs: Any) -> OnlineStore:
    """An :class:`OnlineStore` on ``redis_url`` (default: the profile's online store, else the project's Redis; a
    ``redis+cluster://`` URL or ``type: redis_cluster`` opens a Redis Cluster), connected as
    :func:`skewless.config.redis_target` says: ``SKEWLESS_REDIS_PASSWORD[_FILE]`` (unless ``password`` is given),
    ``SKEWLESS_REDIS_TLS_CA_FILE`` and the connect/read timeouts (``SKEWLESS_REDIS_[CONNECT_]TIMEOUT_S``). The
    store is checked on its first read (:func:`skewless.engines.redis_client.check_online_store`)."""
    if not isinstance(repo, Repository):
        repo = load_repository(repo)
    profile = load_profile(repo.path, profile_name)  # the repository's skewless.yaml (docs/deploy.md)
    if tls:
        redis_url = redis_url or redis_target(None, profile).url
        if redis_url.startswith(("redis://", "redis+cluster://")):
            redis_url = "rediss" + redis_url[len("redis"):]
    target = redis_target(redis_url, profile)
    store = OnlineStore(repo, open_redis(target, **({"password": password} if password else {})),
                        project or default_project(profile), **kwargs)
    store.target = target
    return store


__all__ = ["EXPIRED", "INCOMPLETE", "PRESENT", "STALE", "AsOfNotAligned", "OnlineRequestError", "OnlineResponse",
           "OnlineStore", "build_plan", "open_store", "read_limits"]
