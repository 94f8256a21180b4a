"""PyIceberg view of the shared catalog: a SqlCatalog over the database Spark's JdbcCatalog uses (the sqlite file,
or the profile's PostgreSQL with an ``s3://`` warehouse, :func:`skewless.config.shared_catalog`)."""

from __future__ import annotations

from pathlib import Path

from skewless.config import ICEBERG_CATALOG_NAME, Profile, paths, shared_catalog
from skewless.engines.object_store import check_shared_catalog, pyiceberg_properties


def load_catalog(catalog_db: str | Path | None = None, warehouse: str | Path | None = None,
                 profile: Profile | None = None):
    """A ``pyiceberg.catalog.sql.SqlCatalog`` named :data:`ICEBERG_CATALOG_NAME` (tables created on first use);
    without a folder, the catalog of ``profile`` (default: the active one): its postgres catalog if it names one,
    else its sqlite file and warehouse."""
    from pyiceberg.catalog.sql import SqlCatalog

    shared = shared_catalog(profile) if catalog_db is None and warehouse is None else None
    if shared is not None:
        check_shared_catalog(shared)  # one line within the timeouts, rather than a traceback or a hang
        return SqlCatalog(ICEBERG_CATALOG_NAME, **pyiceberg_properties(shared))
    where = paths(profile)
    wh = Path(warehouse or where.warehouse).resolve()
    db = Path(catalog_db or where.catalog_db).resolve()
    wh.mkdir(parents=True, exist_ok=True)
    db.parent.mkdir(parents=True, exist_ok=True)
    return SqlCatalog(ICEBERG_CATALOG_NAME, uri=f"sqlite:///{db}", warehouse=wh.as_uri())
