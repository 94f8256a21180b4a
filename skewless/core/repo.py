"""A feature repository: the definitions found in a folder (``feature_defs/``), validated as a whole.

:func:`load_repository` imports every module of the folder, collects the module-level DSL objects
(plus the entities and sources the views use), validates them all at once and raises
:class:`~skewless.core.validation.DefinitionError` listing every problem.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from skewless.core.dsl import (
    Entity,
    EventSource,
    FeatureService,
    FeatureView,
    SnapshotView,
    TableSource,
    View,
)
from skewless.core.schemas import DEFAULT_SCHEMAS_DIR, EventSchema, SchemaError, load_schema
from skewless.core.validation import DefinitionError, UnknownFeatureError, feature_type, validate_repository

Source = EventSource | TableSource
_DEFINITION_TYPES = (Entity, EventSource, TableSource, FeatureView, SnapshotView, FeatureService)


class RepositoryLoadError(Exception):
    """The repository folder cannot be imported (missing folder, syntax error, failing import)."""


def _unique(objs: Iterable[Any]) -> tuple[Any, ...]:
    out: list[Any] = []
    for obj in objs:
        if not any(obj is seen or _same(obj, seen) for seen in out):
            out.append(obj)
    return tuple(out)


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - a weird user value must not break loading
        return False


@dataclass(frozen=True)
class Repository:
    """Immutable set of definitions. Several objects may share a name (validation reports it);
    the by-name lookups return the first."""

    entities: tuple[Entity, ...] = ()
    sources: tuple[Source, ...] = ()
    views: tuple[View, ...] = ()
    services: tuple[FeatureService, ...] = ()
    schemas_dir: Path = field(default=DEFAULT_SCHEMAS_DIR)
    path: Path | None = None

    @staticmethod
    def of(definitions: Iterable[Any], schemas_dir: Path | str | None = None, path: Path | None = None) -> Repository:
        """A repository from loose definitions; the entities and sources views use are added."""
        defs = [d for d in definitions if isinstance(d, _DEFINITION_TYPES)]
        views = _unique(d for d in defs if isinstance(d, (FeatureView, SnapshotView)))
        entities = _unique(
            [d for d in defs if isinstance(d, Entity)] + [v.entity for v in views if isinstance(v.entity, Entity)]
        )
        sources = _unique(
            [d for d in defs if isinstance(d, (EventSource, TableSource))]
            + [v.source for v in views if isinstance(v.source, (EventSource, TableSource))]
        )
        services = _unique(d for d in defs if isinstance(d, FeatureService))
        return Repository(entities, sources, views, services, Path(schemas_dir or DEFAULT_SCHEMAS_DIR), path)

    # -- lookups ------------------------------------------------------------------------------------

    @property
    def entities_by_name(self) -> dict[str, Entity]:
        return _by_name(self.entities)

    @property
    def sources_by_name(self) -> dict[str, Source]:
        return _by_name(self.sources)

    @property
    def views_by_name(self) -> dict[str, View]:
        return _by_name(self.views)

    @property
    def services_by_name(self) -> dict[str, FeatureService]:
        return _by_name(self.services)

    def view(self, name: str) -> View:
        try:
            return self.views_by_name[name]
        except KeyError:
            raise UnknownFeatureError(unknown_message("feature view", name, self.views_by_name)) from None

    def schema(self, name: str) -> EventSchema:
        """The typed fields of schema ``name`` from this repository's schemas folder."""
        return load_schema(name, self.schemas_dir)

    def try_schema(self, name: str) -> EventSchema | None:
        try:
            return self.schema(name)
        except SchemaError:
            return None

    def feature_type(self, view: View, name: str) -> str | None:
        """The value type (one of ``schemas.TYPES``) of feature ``name`` of ``view``: a snapshot field's declared
        dtype, else what the aggregation or expression gives over the source's schema; None if unknown."""
        if isinstance(view, SnapshotView):
            return next((f.dtype for f in view.fields if f.name == name), None)
        return feature_type(view, name, self.try_schema(view.source.schema))

    # -- feature references -------------------------------------------------------------------------

    def resolve_features(self, refs: list[str] | tuple[str, ...] | FeatureService | str) -> list[tuple[View, str]]:
        """``view:feature``, ``view`` (all its features) or a service name -> ``[(view, feature), ...]``.

        Order follows the references; duplicates are dropped. Unknown references raise
        :class:`UnknownFeatureError` naming the reference and close matches.
        """
        if isinstance(refs, FeatureService):
            refs = refs.features
        elif isinstance(refs, str):
            refs = [refs]
        out: list[tuple[View, str]] = []
        seen: set[tuple[str, str]] = set()
        for ref in refs:
            for view, feature in self._resolve_one(ref, depth=0):
                if (view.name, feature) not in seen:
                    seen.add((view.name, feature))
                    out.append((view, feature))
        return out

    def _resolve_one(self, ref: str, depth: int) -> list[tuple[View, str]]:
        if not isinstance(ref, str) or not ref:
            raise UnknownFeatureError(f"feature reference {ref!r} is not a 'view:feature', 'view' or service name")
        views = self.views_by_name
        if ":" in ref:
            view_name, _, feature = ref.partition(":")
            if view_name not in views:
                raise UnknownFeatureError(f"feature reference {ref!r}: " + unknown_message("feature view", view_name, views))
            view = views[view_name]
            if feature not in _names(view):
                raise UnknownFeatureError(
                    f"feature reference {ref!r}: view '{view_name}' has no feature {feature!r}"
                    + _close(feature, _names(view), "features")
                )
            return [(view, feature)]
        if ref in views:
            return [(views[ref], f) for f in _names(views[ref])]
        services = self.services_by_name
        if ref in services and depth == 0:
            return [pair for r in services[ref].features for pair in self._resolve_one(r, depth + 1)]
        qualified = [f"{v.name}:{f}" for v in self.views for f in _names(v)]
        bare = {f: f"{v.name}:{f}" for v in self.views for f in _names(v)}
        if ref in bare:
            raise UnknownFeatureError(
                f"feature reference {ref!r}: no view or service has that name; did you mean '{bare[ref]}'? "
                "(features are referenced as 'view:feature')"
            )
        raise UnknownFeatureError(
            f"feature reference {ref!r}: " + unknown_message("feature view or service", ref, [*views, *services, *qualified])
        )


def _names(view: View) -> tuple[str, ...]:
    items = view.features if isinstance(view, FeatureView) else view.fields
    return tuple(n for n in (getattr(i, "name", None) for i in items) if isinstance(n, str))


def _by_name(objs: Iterable[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for obj in objs:
        out.setdefault(getattr(obj, "name", None), obj)
    return out


def _close(name: str, known: Iterable[str], what: str) -> str:
    names = sorted(str(k) for k in known)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
    return f"{hint} ({what}: {shown})" if names else f" (no {what} defined)"


def unknown_message(kind: str, name: str, known: Iterable[str]) -> str:
    return f"unknown {kind} {name!r}" + _close(name, known, "known")


def resolve_features(repo: Repository, refs: list[str] | tuple[str, ...] | FeatureService | str) -> list[tuple[View, str]]:
    """Module-level alias of :meth:`Repository.resolve_features`."""
    return repo.resolve_features(refs)


# --- loading -------------------------------------------------------------------------------------


def _import_folder(folder: Path) -> list[types.ModuleType]:
    """Import every module under ``folder`` as a package named after the folder (so absolute imports
    such as ``from feature_defs.entities import user`` resolve to the same objects)."""
    pkg_name = folder.name if folder.name.isidentifier() else f"_skewless_defs_{abs(hash(str(folder)))}"
    saved = {k: v for k, v in sys.modules.items() if k == pkg_name or k.startswith(pkg_name + ".")}
    for k in saved:
        del sys.modules[k]
    modules: list[types.ModuleType] = []
    current = pkg_name
    try:
        init = folder / "__init__.py"
        if init.exists():
            spec = importlib.util.spec_from_file_location(pkg_name, init, submodule_search_locations=[str(folder)])
            if spec is None or spec.loader is None:
                raise ImportError(f"no import spec for {init}")
            package = importlib.util.module_from_spec(spec)
            sys.modules[pkg_name] = package
            spec.loader.exec_module(package)
        else:
            package = types.ModuleType(pkg_name)
            package.__path__ = [str(folder)]  # type: ignore[attr-defined]
            sys.modules[pkg_name] = package
        modules.append(package)
        for info in sorted(pkgutil.walk_packages([str(folder)], prefix=pkg_name + "."), key=lambda i: i.name):
            current = info.name
            modules.append(importlib.import_module(info.name))
    except Exception as exc:  # noqa: BLE001 - any error in user code becomes one clear message
        where = _user_frame(exc, folder)
        raise RepositoryLoadError(
            f"cannot import module '{current.partition('.')[2] or '__init__'}' of feature repository {folder}"
            f"{where}: {type(exc).__name__}: {exc}; fix the module and re-run"
        ) from exc
    finally:
        for k in [k for k in sys.modules if k == pkg_name or k.startswith(pkg_name + ".")]:
            del sys.modules[k]
        sys.modules.update(saved)
    return modules


def _user_frame(exc: BaseException, folder: Path) -> str:
    """`` (file.py line N)`` of the innermost frame inside the repository folder, if any."""
    import traceback

    if isinstance(exc, SyntaxError) and exc.filename:
        return f" ({Path(exc.filename).name} line {exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(str(folder))]
    return f" ({Path(frames[-1].filename).name} line {frames[-1].lineno})" if frames else ""


def load_repository(
    path: str | Path = "feature_defs", schemas_dir: str | Path | None = None, validate: bool = True
) -> Repository:
    """Import every module of ``path``, collect its definitions and validate them.

    ``schemas_dir`` defaults to the ``schemas/`` folder next to ``path``. Raises
    :class:`RepositoryLoadError` if a module cannot be imported and
    :class:`~skewless.core.validation.DefinitionError` with every problem found.
    """
    folder = Path(path).resolve()
    if not folder.is_dir():
        raise RepositoryLoadError(
            f"feature repository folder {str(path)!r} not found (resolved to {folder}); "
            "run from the project root or pass --repo PATH"
        )
    schemas = Path(schemas_dir).resolve() if schemas_dir else folder.parent / "schemas"
    definitions: list[Any] = []
    for module in _import_folder(folder):
        definitions.extend(v for k, v in vars(module).items() if not k.startswith("__") and isinstance(v, _DEFINITION_TYPES))
    repo = Repository.of(definitions, schemas_dir=schemas, path=folder)
    if validate:
        problems = validate_repository(repo)
        if problems:
            raise DefinitionError(problems)
    return repo
