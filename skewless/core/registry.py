"""The applied state of a feature repository (``.skewless/registry.json``) and the versioning rules.

``skewless apply`` records every view's version and semantic fingerprint (plus the canonical form, so
changes can be explained). A view whose semantics changed keeps its values only under a new version:

- same version, same fingerprint: unchanged (non-semantic edits such as the SLA are recorded);
- same version, different fingerprint: **refused**, bump the version;
- higher version: a version bump (the new version is backfilled and materialized separately);
- lower version, or a version applied before with other semantics: **refused**.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from skewless.core.plan import RepositoryPlan, ViewPlan, semantic_fingerprint
from skewless.core.timeutil import format_duration

STATE_FORMAT = 1


class RegistryError(Exception):
    """The state file cannot be read or written."""


class RefusedChangeError(Exception):
    """``apply`` refuses the plan; ``reasons`` lists every refused change."""

    def __init__(self, reasons: list[str]):
        self.reasons = tuple(reasons)
        super().__init__("apply refused:\n" + "\n".join(f"  - {r}" for r in reasons))


@dataclass(frozen=True)
class ViewChange:
    """How one view differs from the applied state."""

    view: str
    action: str  # "added" | "removed" | "unchanged" | "updated" | "version bump" | "rolled back" | "refused"
    old_version: int | None
    new_version: int | None
    details: tuple[str, ...] = ()
    refused: str | None = None


@dataclass(frozen=True)
class ServiceChange:
    service: str
    action: str  # "added" | "removed" | "changed"
    details: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegistryDiff:
    """The plan against the applied state."""

    views: tuple[ViewChange, ...]
    services: tuple[ServiceChange, ...]
    first_apply: bool = False

    @property
    def refused(self) -> tuple[str, ...]:
        return tuple(c.refused for c in self.views if c.refused)

    @property
    def has_changes(self) -> bool:
        return bool(self.services) or any(c.action != "unchanged" for c in self.views)

    def render(self) -> str:
        lines = []
        for c in self.views:
            if c.action == "unchanged":
                continue
            mark = {"added": "+", "removed": "-", "refused": "!"}.get(c.action, "~")
            version = (f"v{c.old_version} -> v{c.new_version}" if c.action == "version bump"
                       else f"v{c.new_version if c.new_version is not None else c.old_version}")
            lines.append(f"  {mark} view {c.view} {version}: {c.action}")
            lines += [f"      {d}" for d in c.details]
            if c.refused:
                lines.append(f"      REFUSED: {c.refused}")
        for s in self.services:
            mark = {"added": "+", "removed": "-"}.get(s.action, "~")
            lines.append(f"  {mark} service {s.service}: {s.action}")
            lines += [f"      {d}" for d in s.details]
        unchanged = [c.view for c in self.views if c.action == "unchanged"]
        if unchanged:
            lines.append(f"  = unchanged: {', '.join(unchanged)}")
        return "\n".join(lines) if lines else "  no views or services"


@dataclass(frozen=True)
class RegistryState:
    """The JSON document of the state file."""

    views: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: dict[str, list[list[str]]] = field(default_factory=dict)
    history: dict[str, dict[str, str]] = field(default_factory=dict)  # view -> version -> fingerprint
    exists: bool = False


# --- describing semantic changes -----------------------------------------------------------------


def _dur(ms: Any) -> str:
    return format_duration(ms) if isinstance(ms, int) or ms is None else str(ms)


def _val(v: Any) -> str:
    if isinstance(v, dict) and len(v) == 1:
        (k, x), = v.items()
        return str(x) if k in ("decimal", "float") else f"{k}={x}"
    return json.dumps(v)


def _where(ws: list[Any]) -> str:
    return " and ".join(f"{f} {op} {_val(v)}" for f, op, v in ws) or "none"


def _expr(e: Any) -> str:
    if not isinstance(e, list) or not e:
        return str(e)
    head = e[0]
    if head == "ref":
        return str(e[1])
    if head == "const":
        return _val(e[1])
    if head == "days_since":
        return f"days_since({_expr(e[1])})"
    if len(e) == 3:
        return f"({_expr(e[1])} {head} {_expr(e[2])})"
    return json.dumps(e)


def describe_semantic_change(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences of two canonical forms, e.g. ``window of 'f' 7d -> 14d``."""
    out: list[str] = []
    if old.get("kind") != new.get("kind"):
        return [f"kind {old.get('kind')} -> {new.get('kind')}"]
    if old.get("keys") != new.get("keys"):
        fmt = lambda ks: ", ".join(f"{k} {t}" for k, t in ks or [])  # noqa: E731
        out.append(f"entity keys {fmt(old.get('keys'))} -> {fmt(new.get('keys'))}")
    for k in sorted(set(old.get("source", {})) | set(new.get("source", {}))):
        a, b = old.get("source", {}).get(k), new.get("source", {}).get(k)
        if a != b:
            out.append(f"source {k.removesuffix('_ms')} {_dur(a) if k.endswith('_ms') else a} -> {_dur(b) if k.endswith('_ms') else b}")
    ot, nt = old.get("field_types"), new.get("field_types")
    if ot is not None and nt is not None:
        out += [f"type of source field '{f}' {ot.get(f)} -> {nt.get(f)}" for f in sorted(set(ot) | set(nt))
                if f in ot and f in nt and ot[f] != nt[f]]
    if old.get("ttl_ms") != new.get("ttl_ms"):
        out.append(f"ttl {_dur(old.get('ttl_ms'))} -> {_dur(new.get('ttl_ms'))}")
    of, nf = old.get("features", {}), new.get("features", {})
    out += [f"added feature '{f}'" for f in nf if f not in of]
    out += [f"removed feature '{f}'" for f in of if f not in nf]
    for f in [f for f in nf if f in of and of[f] != nf[f]]:
        a, b = of[f], nf[f]
        if "derived" in a or "derived" in b:
            out.append(f"expression of '{f}' {_expr(a.get('derived', a))} -> {_expr(b.get('derived', b))}")
            continue
        wa, wb = a.get("window", {}), b.get("window", {})
        if wa.get("width_ms") != wb.get("width_ms"):
            out.append(f"window of '{f}' {_dur(wa.get('width_ms'))} -> {_dur(wb.get('width_ms'))}")
        if wa.get("tile_ms") != wb.get("tile_ms"):
            out.append(f"tile of '{f}' {_dur(wa.get('tile_ms'))} -> {_dur(wb.get('tile_ms'))}")
        for k, label in (("agg", "aggregation"), ("field", "field"), ("dtype", "dtype")):
            if a.get(k) != b.get(k):
                out.append(f"{label} of '{f}' {a.get(k)} -> {b.get(k)}")
        if a.get("where") != b.get("where"):
            out.append(f"filter of '{f}' {_where(a.get('where', []))} -> {_where(b.get('where', []))}")
    return out or ["canonical form changed"]


def describe_metadata_change(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    if old.get("freshness_sla_ms") != new.get("freshness_sla_ms"):
        out.append(f"freshness SLA {_dur(old.get('freshness_sla_ms'))} -> {_dur(new.get('freshness_sla_ms'))}")
    oe, ne = set(old.get("expectations", [])), set(new.get("expectations", []))
    out += [f"added expectation {e}" for e in sorted(ne - oe)]
    out += [f"removed expectation {e}" for e in sorted(oe - ne)]
    key = "block_materialization_on_failed_checks"
    if old.get(key) != new.get(key):
        out.append(f"{key} {old.get(key)} -> {new.get(key)}")
    return out


# --- the registry --------------------------------------------------------------------------------

UNTYPED_NOTE = "the fingerprint now covers the types of the source fields the view reads (recorded by the next apply)"


def _untyped(canonical: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in canonical.items() if k != "field_types"}


def _fingerprints(v: ViewPlan) -> tuple[str, str]:
    """The view's fingerprint and the one a state written before field types were covered recorded for it."""
    return v.semantic_fingerprint, semantic_fingerprint(_untyped(v.canonical_form()))


def _same_semantics(record: dict[str, Any], v: ViewPlan) -> bool:
    """The applied record has the plan's semantics: the same fingerprint, or (a record from before field types
    were covered) the same canonical form apart from the types."""
    if record.get("fingerprint") == v.semantic_fingerprint:
        return True
    canonical = record.get("canonical", {})
    return "field_types" not in canonical and record.get("fingerprint") == _fingerprints(v)[1]


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def state_shape_problem(doc: dict[str, Any]) -> str | None:
    """What is wrong with the shape of a state document (None: the shape :meth:`Registry.apply` writes)."""
    views, services, history = doc.get("views", {}), doc.get("services", {}), doc.get("history", {})
    if not isinstance(views, dict):
        return f"'views' is a {type(views).__name__}, not an object"
    for name, rec in views.items():
        if not isinstance(rec, dict):
            return f"views.{name} is a {type(rec).__name__}, not an object"
        if not _is_int(rec.get("version")):
            return f"views.{name}.version is {rec.get('version')!r}, not an integer"
        if not isinstance(rec.get("fingerprint"), str):
            return f"views.{name}.fingerprint is {rec.get('fingerprint')!r}, not a string"
        for key in ("canonical", "metadata"):
            if not isinstance(rec.get(key, {}), dict):
                return f"views.{name}.{key} is not an object"
    if not isinstance(services, dict):
        return f"'services' is a {type(services).__name__}, not an object"
    for name, feats in services.items():
        if not (isinstance(feats, list) and all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in feats)):
            return f"services.{name} is not a list of [view, feature] pairs"
    if not isinstance(history, dict):
        return f"'history' is a {type(history).__name__}, not an object"
    for name, versions in history.items():
        if not (isinstance(versions, dict) and all(k.isdigit() and isinstance(v, str) for k, v in versions.items())):
            return f"history.{name} is not an object of version -> fingerprint"
    return None


class Registry:
    """The state file at ``path``; ``diff`` compares a plan with it, ``apply`` records a plan."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def load(self) -> RegistryState:
        if not self.path.exists():
            return RegistryState()
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"cannot read registry state {self.path}: {exc}; fix or remove the file") from None
        if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT:
            raise RegistryError(f"registry state {self.path} has an unknown format; expected format {STATE_FORMAT}")
        problem = state_shape_problem(doc)
        if problem:
            raise RegistryError(f"registry state {self.path} is damaged: {problem}; fix or remove the file "
                                "(`skewless apply` writes it again)")
        return RegistryState(doc.get("views", {}), doc.get("services", {}), doc.get("history", {}), True)

    def diff(self, plan: RepositoryPlan, state: RegistryState | None = None) -> RegistryDiff:
        state = state if state is not None else self.load()
        newest = {v.name: v.version for v in plan.views}
        for v in plan.views:
            newest[v.name] = max(newest[v.name], v.version)
        changes = [self._view_change(v, state) if v.version == newest[v.name] else self._kept_version(v, state)
                   for v in plan.views]
        names = {v.name for v in plan.views}
        changes += [
            ViewChange(name, "removed", rec.get("version"), None, ("its keys expire from the online store",))
            for name, rec in sorted(state.views.items()) if name not in names
        ]
        services = []
        planned = {s.name: [list(p) for p in s.features] for s in plan.services}
        for name, feats in planned.items():
            if name not in state.services:
                services.append(ServiceChange(name, "added", (f"{len(feats)} features",)))
            elif state.services[name] != feats:
                old = {tuple(p) for p in state.services[name]}
                new = {tuple(p) for p in feats}
                details = [f"+ {v}:{f}" for v, f in feats if (v, f) not in old]
                details += [f"- {v}:{f}" for v, f in state.services[name] if (v, f) not in new]
                services.append(ServiceChange(name, "changed", tuple(details) or ("feature order",)))
        services += [ServiceChange(n, "removed") for n in sorted(state.services) if n not in planned]
        return RegistryDiff(tuple(changes), tuple(services), not state.exists)

    @staticmethod
    def _kept_version(v: ViewPlan, state: RegistryState) -> ViewChange:
        """The older of a view's two declared versions (an upgrade): it keeps serving until `skewless promote`, so it
        must keep the semantics it was applied with."""
        before = state.history.get(v.name, {}).get(str(v.version))
        if before is not None and before not in _fingerprints(v):
            return ViewChange(v.name, "refused", v.version, v.version, (), (
                f"{v.kind} '{v.name}' version {v.version} (the older version of an upgrade) changed its semantics; "
                "revert it: it serves until `skewless promote` names the newer version"))
        return ViewChange(v.name, "unchanged" if before is not None else "added", v.version, v.version,
                          ("kept during the upgrade (serves until `skewless promote`)",))

    @staticmethod
    def _view_change(v: ViewPlan, state: RegistryState) -> ViewChange:
        seen = state.history.get(v.name, {})
        before = seen.get(str(v.version))
        old = state.views.get(v.name)
        if old is None:
            if before is not None and before not in _fingerprints(v):
                nxt = max(int(k) for k in seen) + 1
                return ViewChange(v.name, "refused", None, v.version, (), (
                    f"feature view '{v.name}' version {v.version} was applied before with other semantics; "
                    f"bump version={nxt} (versions are never reused)"))
            return ViewChange(v.name, "added", None, v.version, (f"fingerprint {v.semantic_fingerprint[:16]}",))
        old_version = int(old.get("version", 0))
        semantic = not _same_semantics(old, v)
        sem = describe_semantic_change(old.get("canonical", {}), v.canonical_form()) if semantic else []
        details = sem + describe_metadata_change(old.get("metadata", {}), v.metadata_form())
        if not semantic and old.get("fingerprint") != v.semantic_fingerprint:
            details.append(UNTYPED_NOTE)
        if v.version < old_version and old.get("upgrade_from") == v.version and before in _fingerprints(v):
            return ViewChange(v.name, "rolled back", old_version, v.version, tuple(details) or (
                f"the upgrade to version {old_version} is dropped; version {v.version} keeps its keys",))
        if v.version < old_version:
            return ViewChange(v.name, "refused", old_version, v.version, tuple(details), (
                f"{v.kind} '{v.name}' went back from version {old_version} to {v.version}; "
                f"versions only increase, use version={old_version + 1 if semantic else old_version}"))
        if v.version == old_version:
            if semantic:
                return ViewChange(v.name, "refused", old_version, v.version, tuple(details), (
                    f"{v.kind} '{v.name}' changed its semantics ({'; '.join(sem)}) without a new version; "
                    f"bump version={old_version + 1} (the new version is backfilled and materialized next to the old one) "
                    "or revert the change"))
            return ViewChange(v.name, "updated" if details else "unchanged", old_version, v.version, tuple(details))
        if before is not None and before not in _fingerprints(v):
            nxt = max(int(k) for k in seen) + 1
            return ViewChange(v.name, "refused", old_version, v.version, tuple(details), (
                f"{v.kind} '{v.name}' version {v.version} was applied before with other semantics; bump version={nxt}"))
        if not semantic:
            details.insert(0, "same semantics (recomputed under the new version)")
        return ViewChange(v.name, "version bump", old_version, v.version, tuple(details))

    def apply(self, plan: RepositoryPlan, now: datetime | None = None) -> RegistryDiff:
        """Record ``plan`` as the applied state; raises :class:`RefusedChangeError` (state untouched)."""
        state = self.load()
        diff = self.diff(plan, state)
        if diff.refused:
            raise RefusedChangeError(list(diff.refused))
        history = {k: dict(v) for k, v in state.history.items()}
        older: dict[str, int] = {}  # view -> the older declared version, for a view declared in two (an upgrade)
        for v in plan.views:
            for w in plan.views:
                if w.name == v.name and w.version < v.version:
                    older[v.name] = w.version
        for v in plan.views:
            history.setdefault(v.name, {})[str(v.version)] = v.semantic_fingerprint
        doc = {
            "format": STATE_FORMAT,
            "applied_at": (now or datetime.now(timezone.utc)).isoformat(timespec="milliseconds"),
            "views": {
                v.name: {
                    "kind": v.kind,
                    "version": v.version,
                    "fingerprint": v.semantic_fingerprint,
                    "canonical": v.canonical_form(),
                    "metadata": v.metadata_form(),
                    **({"upgrade_from": older[v.name]} if v.name in older else {}),
                }
                for v in sorted(plan.views, key=lambda v: v.version)  # the newest version of a name is recorded
            },
            "services": {s.name: [list(p) for p in s.features] for s in plan.services},
            "history": history,
        }
        self._write(doc)
        return diff

    def _write(self, doc: dict[str, Any]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".registry-", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=2, sort_keys=True)
                fh.write("\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise RegistryError(f"cannot write registry state {self.path}: {exc}") from None
