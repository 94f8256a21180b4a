"""The object store and the PostgreSQL catalog of a ``catalog.type: postgres`` profile, as the engines reach them:
PyArrow's S3 file system, PyIceberg's and Spark's Iceberg settings (S3 FileIO), and the checks that turn a wrong
endpoint, a missing bucket, bad credentials or an unreachable catalog into one line naming the component and the fix.

Credentials travel only inside these objects and settings (never argv, never a message).
"""

from __future__ import annotations

import socket
from urllib.parse import quote, urlsplit

from skewless.config import ICEBERG_CATALOG_NAME, S3Target, SharedCatalog
from skewless.engines import EngineSetupError

# The AWS SDK v2 (in Iceberg's AWS bundle) sends CRC checksums on every request by default; s3proxy rejects them.
AWS_CHECKSUM_ENV = {"AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
                    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required"}


def s3_filesystem(target: S3Target, allow_bucket_creation: bool = False):
    """A ``pyarrow.fs.S3FileSystem`` on ``target`` with its timeouts."""
    from pyarrow import fs

    parts = urlsplit(target.endpoint)
    return fs.S3FileSystem(access_key=target.access_key_id, secret_key=target.secret_access_key,
                           endpoint_override=parts.netloc, scheme=parts.scheme or "http", region=target.region,
                           connect_timeout=target.timeout_s, request_timeout=target.timeout_s,
                           allow_bucket_creation=allow_bucket_creation)


def read_parquet(location: str):
    """A Parquet file (or folder of them) as a ``pyarrow.Table``: ``s3://BUCKET/KEY`` through the profile's object
    store (endpoint, credentials, timeouts), anything else from the local file system."""
    import pyarrow.parquet as pq

    if location.startswith("s3://"):
        from skewless.config import s3_target

        target = s3_target()
        check_bucket(target, location[len("s3://"):].split("/", 1)[0])
        return pq.read_table(location[len("s3://"):], filesystem=s3_filesystem(target))
    return pq.read_table(location)


def check_bucket(target: S3Target, bucket: str) -> None:
    """Raise :class:`EngineSetupError` (one line: the object store, what is wrong, the fix) unless ``bucket`` exists
    on ``target`` and its credentials may read it."""
    from pyarrow import fs

    where = f"object store {target.endpoint}"
    try:
        info = s3_filesystem(target).get_file_info(bucket)
    except OSError as exc:
        text = str(exc)
        if "ACCESS_DENIED" in text or "SIGNATURE" in text.upper() or "InvalidAccessKeyId" in text or "403" in text:
            raise EngineSetupError(f"{where}: the credentials were refused (bucket {bucket!r}); fix object_store."
                                   "access_key_id / secret_access_key of the profile") from None
        if "NETWORK_CONNECTION" in text or "curlCode" in text or "timed out" in text.lower():
            raise EngineSetupError(f"{where}: no S3 server answers within {target.timeout_s:.0f} s; fix object_store."
                                   "endpoint of the profile or start the store (skewless stack up --topology "
                                   "cluster)") from None
        raise EngineSetupError(f"{where}: cannot read bucket {bucket!r} ({text.splitlines()[0][:200]})") from None
    if info.type != fs.FileType.Directory:
        raise EngineSetupError(f"{where}: no bucket {bucket!r}; fix the catalog.warehouse s3://{bucket}/... of the "
                               "profile or create the bucket")


def check_catalog_db(catalog: SharedCatalog) -> None:
    """Raise :class:`EngineSetupError` (one line) unless the catalog's PostgreSQL answers and accepts its user."""
    import pg8000

    host, port, db = catalog.host_port_db
    where = f"catalog database {catalog.uri}"
    try:
        conn = pg8000.connect(user=catalog.user, password=catalog.password, host=host, port=port, database=db,
                              timeout=catalog.timeout_s)
    except (socket.timeout, TimeoutError):
        raise EngineSetupError(f"{where}: no answer within {catalog.timeout_s:.0f} s; fix catalog.uri of the profile "
                               "or start the database") from None
    except pg8000.InterfaceError as exc:
        raise EngineSetupError(f"{where}: cannot connect ({str(exc).splitlines()[0][:160]}); fix catalog.uri of the "
                               "profile or start the database (skewless stack up --topology cluster)") from None
    except pg8000.DatabaseError as exc:
        detail = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        reason = detail.get("M", "refused") if isinstance(detail, dict) else "refused"
        raise EngineSetupError(f"{where}: {reason}; fix catalog.user / catalog.password (or the database in "
                               "catalog.uri) of the profile") from None
    conn.close()


def check_shared_catalog(catalog: SharedCatalog) -> None:
    """Both halves of the shared catalog answer: the database and the warehouse's bucket."""
    check_catalog_db(catalog)
    check_bucket(catalog.s3, catalog.bucket)


def pyiceberg_properties(catalog: SharedCatalog) -> dict[str, str]:
    """``SqlCatalog`` properties: the database (pg8000 through SQLAlchemy), the warehouse, PyArrow's S3 FileIO."""
    host, port, db = catalog.host_port_db
    s3 = catalog.s3
    return {
        "uri": f"postgresql+pg8000://{quote(catalog.user, safe='')}:{quote(catalog.password, safe='')}@{host}:{port}/{db}",
        "warehouse": catalog.warehouse,
        "py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO",
        "s3.endpoint": s3.endpoint,
        "s3.access-key-id": s3.access_key_id,
        "s3.secret-access-key": s3.secret_access_key,
        "s3.region": s3.region,
        "s3.connect-timeout": str(s3.timeout_s),
    }


# Keys of :func:`spark_catalog_conf` that hold credentials: a SparkSession gets them only after its JVM started
# (PySpark passes the builder's settings to spark-submit as ``--conf`` arguments, readable in the process list).
SECRET_CONF_SUFFIXES = (".jdbc.password", ".s3.access-key-id", ".s3.secret-access-key")


def is_secret_conf(key: str) -> bool:
    """Whether a Spark setting of :func:`spark_catalog_conf` holds a credential."""
    return key.endswith(SECRET_CONF_SUFFIXES)


def spark_catalog_conf(catalog: SharedCatalog) -> dict[str, str]:
    """``spark.sql.catalog.<name>.*`` of the JDBC catalog in PostgreSQL with Iceberg's S3 FileIO (the AWS bundle),
    and the executors' environment that turns the AWS SDK's default checksums off (:data:`AWS_CHECKSUM_ENV`)."""
    host, port, db = catalog.host_port_db
    s3 = catalog.s3
    p = f"spark.sql.catalog.{ICEBERG_CATALOG_NAME}"
    conf = {
        p: "org.apache.iceberg.spark.SparkCatalog",
        f"{p}.type": "jdbc",
        f"{p}.uri": f"jdbc:postgresql://{host}:{port}/{db}",
        f"{p}.jdbc.user": catalog.user,
        f"{p}.jdbc.password": catalog.password,
        f"{p}.jdbc.schema-version": "V1",
        f"{p}.jdbc.connectTimeout": str(int(catalog.timeout_s)),
        f"{p}.warehouse": catalog.warehouse,
        f"{p}.io-impl": "org.apache.iceberg.aws.s3.S3FileIO",
        f"{p}.s3.endpoint": s3.endpoint,
        f"{p}.s3.path-style-access": str(s3.path_style_access).lower(),
        f"{p}.s3.access-key-id": s3.access_key_id,
        f"{p}.s3.secret-access-key": s3.secret_access_key,
        f"{p}.client.region": s3.region,
    }
    conf.update({f"spark.executorEnv.{k}": v for k, v in AWS_CHECKSUM_ENV.items()})
    return conf
