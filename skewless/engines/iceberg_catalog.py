"""PyIceberg view of the shared catalog: a SqlCatalog over the sqlite file Spark's JdbcCatalog uses."""

from __future__ import annotations

from pathlib import Path

from skewless.config import ICEBERG_CATALOG_NAME, paths


def load_catalog(catalog_db: str | Path | None = None, warehouse: str | Path | None = None):
    """A ``pyiceberg.catalog.sql.SqlCatalog`` named :data:`ICEBERG_CATALOG_NAME` (tables created on first use)."""
    from pyiceberg.catalog.sql import SqlCatalog

    wh = Path(warehouse or paths().warehouse).resolve()
    db = Path(catalog_db or paths().catalog_db).resolve()
    wh.mkdir(parents=True, exist_ok=True)
    db.parent.mkdir(parents=True, exist_ok=True)
    return SqlCatalog(ICEBERG_CATALOG_NAME, uri=f"sqlite:///{db}", warehouse=wh.as_uri())
