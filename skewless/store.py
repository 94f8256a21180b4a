"""The user's facade: ``from skewless.store import FeatureStore`` (logic lives in :mod:`skewless.training`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class FeatureStore:
    """A feature repository plus the Iceberg catalog its batch tables live in.

    ``repo_path`` is a feature repository folder, or an already loaded
    :class:`~skewless.core.repo.Repository`; ``catalog`` a PyIceberg catalog (default: the project's).
    """

    def __init__(self, repo_path: str | Path | Any = "feature_defs", *, catalog: Any = None, spark: Any = None,
                 redis: Any = None, project: str | None = None, kafka_bootstrap: str | None = None,
                 profile: str | None = None):
        """``redis``: a redis-py client or URL for online reads; ``project``: the online store's key prefix;
        ``kafka_bootstrap``: where :meth:`push` produces. Unset, each comes from the environment, else from the
        ``profile`` (default ``$SKEWLESS_PROFILE``, else the file's default) of the repository's ``skewless.yaml``
        (docs/deploy.md), else the local stack; so do the catalog and the secrets."""
        from skewless.core.repo import Repository, load_repository
        from skewless.profile import load_profile

        self.repo = repo_path if isinstance(repo_path, Repository) else load_repository(repo_path)
        self.profile = load_profile(self.repo.path, profile)
        self._catalog = catalog
        self._spark = spark
        self._redis, self._project, self._kafka = redis, project, kafka_bootstrap
        self._online: Any = None
        self._pusher: Any = None

    @property
    def catalog(self) -> Any:
        if self._catalog is None:
            from skewless.engines.iceberg_catalog import load_catalog

            self._catalog = load_catalog(profile=self.profile)  # its postgres (s3://) or sqlite catalog
        return self._catalog

    def get_historical_features(self, entity_df: Any, features: Any, *, timestamp_column: str = "event_timestamp",
                                engine: str = "duckdb", progress: bool = True, to_arrow: bool = False) -> Any:
        """Point-in-time correct features for every row of ``entity_df`` (pandas or Arrow).

        ``features``: ``["view:feature", "view", ...]``, a FeatureService or its name. Returns the input rows
        in input order (duplicates kept) with the feature columns (``feature``, or ``view__feature`` when two
        views share a name) and one ``<view>__status`` column per view appended; pandas in gives pandas
        (``to_arrow=True``: an Arrow table), Arrow in gives Arrow. ``engine``: ``"duckdb"`` or ``"spark"``.
        """
        import pyarrow as pa

        from skewless.training import historical_features

        result = historical_features(self.repo, lambda: self.catalog, entity_df, features, timestamp_column=timestamp_column,
                                     engine=engine, progress=progress, spark=self._spark)
        if to_arrow and not isinstance(result, (pa.Table, pa.RecordBatch)):
            return pa.Table.from_pandas(result, preserve_index=False)
        return result

    def spine(self, features: Any, start: Any, end: Any, every: str = "1h", *, entities: Any = None,
              timestamp_column: str = "event_timestamp") -> Any:
        """An entity_df of every entity (given, or found in the views' sources) at every instant of
        ``[start, end)`` stepping by ``every`` (``"15m"``, ``"1h"``, ``"1d"``), as an Arrow table."""
        from skewless.training.plan import build_pit_plan
        from skewless.training.spine import build_spine

        return build_spine(build_pit_plan(self.repo, features), start, end, every, entities=entities,
                           catalog=self.catalog, timestamp_column=timestamp_column)

    def get_online_features(self, entity_rows: Any, features: Any, *, as_of: Any = None) -> Any:
        """Online values at "now" (or a tile-aligned ``as_of``) for ``entity_rows`` (list of dicts, dict of
        join key -> list, or DataFrame): an :class:`~skewless.serving.online.OnlineResponse` with per-value
        status and age, per view whether the store holds any state of each entity (``found``: False for an
        unknown id) and the source progress, from one Redis round trip (docs/serving.md)."""
        if self._online is None:
            from skewless.serving.online import OnlineStore, open_store

            self._online = (open_store(self.repo, self._redis, project=self._project, profile_name=self.profile.name)
                            if self._redis is None or isinstance(self._redis, str)
                            else OnlineStore(self.repo, self._redis, self._project))
        return self._online.get_online_features(entity_rows, features, as_of=as_of)

    def push(self, source: Any, events: Any) -> Any:
        """Validate ``events`` against the source (all or none) and produce them to its topic; returns the
        :class:`~skewless.serving.push.PushResult` (raises :class:`~skewless.serving.push.PushError`)."""
        if self._pusher is None:
            from skewless.config import kafka_bootstrap
            from skewless.serving.push import Pusher

            self._pusher = Pusher(self.repo, self._kafka or kafka_bootstrap(self.profile))
        return self._pusher.push(source, events)
