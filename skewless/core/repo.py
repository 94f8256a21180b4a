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
from skewless.core.layout.keys import upgrade_lane
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
        """View name -> the view; for a view declared in two versions (an upgrade), the older one."""
        out: dict[str, View] = {}
        for v in self.views:
            seen = out.get(v.name)
            if seen is None or _version(v) < _version(seen):
                out[v.name] = v
        return out

    @property
    def services_by_name(self) -> dict[str, FeatureService]:
        return _by_name(self.services)

    def versions(self, name: str) -> tuple[View, ...]:
        """The declared versions of view ``name``, oldest first (two during an upgrade; empty if unknown)."""
        return tuple(sorted((v for v in self.views if v.name == name), key=_version))

    def is_upgrading(self, name: str) -> bool:
        """Whether view ``name`` is declared in two versions (docs/streaming.md, "Changing a definition")."""
        return len(self.versions(name)) > 1

    def view(self, name: str, version: int | None = None) -> View:
        """View ``name``: the given ``version``, or (None) the older declared version."""
        if version is None:
            try:
                return self.views_by_name[name]
            except KeyError:
                raise UnknownFeatureError(unknown_message("feature view", name, self.views_by_name)) from None
        versions = self.versions(name)
        if not versions:
            raise UnknownFeatureError(unknown_message("feature view", name, self.views_by_name))
        for v in versions:
            if _version(v) == version:
                return v
        raise UnknownFeatureError(f"feature view {name!r} has no version {version!r} (declared: "
                                  f"{', '.join(f'v{_version(v)}' for v in versions)}); declare it in the feature "
                                  "repository or name a declared version")

    def progress_lane(self, view: View) -> str:
        """The progress lane of ``view``'s streaming job: "" (the source's job) unless ``view`` is the newer of two
        declared versions, whose upgrade job has its own (``layout.upgrade_lane``)."""
        versions = self.versions(view.name)
        if len(versions) > 1 and view is versions[-1]:
            return upgrade_lane(view)
        return ""

    def view_named(self, text: str) -> View:
        """The view a command line names: ``name`` (refused for a view declared in two versions: ambiguous) or
        ``name@vN``."""
        name, at, version = text.partition("@")
        if at:
            if not (version[:1] == "v" and version[1:].isdigit()):
                raise UnknownFeatureError(f"{text!r} is not 'view' or 'view@vN' (e.g. '{name}@v2')")
            return self.view(name, int(version[1:]))
        versions = self.versions(name)
        if len(versions) > 1:
            raise UnknownFeatureError(
                f"feature view {name!r} is declared in versions {', '.join(f'v{_version(v)}' for v in versions)} (an "
                f"upgrade); name one: {' or '.join(repr(f'{name}@v{_version(v)}') for v in versions)}")
        return self.view(name)

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

        ``view@vN:feature`` and ``view@vN`` name version N of a view declared in two versions (an upgrade); without
        ``@vN`` such a view resolves to its older version and the features must exist in both (see
        :meth:`resolve_versions`). Order follows the references; duplicates are dropped. Unknown references raise
        :class:`UnknownFeatureError` naming the reference and close matches.
        """
        return [(view, feature) for view, feature, _ in self.resolve_versions(refs)]

    def resolve_versions(self, refs: list[str] | tuple[str, ...] | FeatureService | str) -> list[tuple[View, str, bool]]:
        """As :meth:`resolve_features`, with per pair whether its reference pinned the version (``@vN``)."""
        if isinstance(refs, FeatureService):
            refs = refs.features
        elif isinstance(refs, str):
            refs = [refs]
        out: list[tuple[View, str, bool]] = []
        seen: set[tuple[str, int, str]] = set()
        for ref in refs:
            for view, feature, pinned in self._resolve_one(ref, depth=0):
                if (view.name, _version(view), feature) not in seen:
                    seen.add((view.name, _version(view), feature))
                    out.append((view, feature, pinned))
        return out

    def _pinned_view(self, ref: str, text: str) -> tuple[View, bool] | None:
        """The view a reference's view part names (``name`` or ``name@vN``) and whether it pinned a version."""
        name, at, version = text.partition("@")
        if at:
            if not (version[:1] == "v" and version[1:].isdigit()):
                raise UnknownFeatureError(f"feature reference {ref!r}: {text!r} is not 'view' or 'view@vN' (e.g. "
                                          f"'{name}@v2')")
            if not self.versions(name):
                return None
            return self.view(name, int(version[1:])), True
        view = self.views_by_name.get(name)
        return None if view is None else (view, False)

    def _resolve_one(self, ref: str, depth: int) -> list[tuple[View, str, bool]]:
        if not isinstance(ref, str) or not ref:
            raise UnknownFeatureError(f"feature reference {ref!r} is not a 'view:feature', 'view' or service name")
        views = self.views_by_name
        if ":" in ref:
            view_name, _, feature = ref.partition(":")
            found = self._pinned_view(ref, view_name)
            if found is None:
                raise UnknownFeatureError(f"feature reference {ref!r}: " + unknown_message("feature view", view_name, views))
            view, pinned = found
            if feature not in _names(view) or not pinned and not self._in_every_version(view.name, feature):
                others = [v for v in self.versions(view.name) if feature in _names(v)]
                if others and not pinned:
                    raise UnknownFeatureError(
                        f"feature reference {ref!r}: view '{view.name}' is declared in versions "
                        f"{', '.join(f'v{_version(v)}' for v in self.versions(view.name))} (an upgrade) and only "
                        f"v{_version(others[0])} has {feature!r}; pin the version: '{view.name}@v{_version(others[0])}:{feature}'")
                raise UnknownFeatureError(
                    f"feature reference {ref!r}: view '{view_name}' has no feature {feature!r}"
                    + _close(feature, _names(view), "features")
                )
            return [(view, feature, pinned)]
        if "@" in ref:
            found = self._pinned_view(ref, ref)
            if found is not None:
                return [(found[0], f, True) for f in _names(found[0])]
        if ref in views:
            view = views[ref]
            if any(set(_names(v)) != set(_names(view)) for v in self.versions(ref)):
                raise UnknownFeatureError(
                    f"feature reference {ref!r}: view '{ref}' is declared in versions "
                    f"{', '.join(f'v{_version(v)}' for v in self.versions(ref))} (an upgrade) with different features; "
                    f"pin the version ('{ref}@v{_version(view)}') or name the features both versions have")
            return [(view, f, False) for f in _names(view)]
        services = self.services_by_name
        if ref in services and depth == 0:
            return [triple for r in services[ref].features for triple in self._resolve_one(r, depth + 1)]
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

    def _in_every_version(self, name: str, feature: str) -> bool:
        return all(feature in _names(v) for v in self.versions(name))


def _version(view: View) -> int:
    version = getattr(view, "version", 1)
    return version if isinstance(version, int) and not isinstance(version, bool) else 1


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
