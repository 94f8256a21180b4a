"""``skewless serve``: the HTTP feature server (docs/serving.md)."""

from __future__ import annotations

import argparse
import errno
import os
import socket

from skewless.commands import CommandError, SecretFlag, fraction, port, positive_int, redis_url

NAME = "serve"
HELP = "HTTP feature server: /get-online-features, /push, /health, /metrics, /openapi.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from skewless.config import HOST

    parser.add_argument("--host", default=HOST, help=f"address to listen on (default {HOST}: loopback only)")
    parser.add_argument("--port", type=port, default=6566, help="port (default 6566)")
    parser.add_argument("--workers", type=positive_int, default=None, help="worker processes (default: the CPU count)")
    parser.add_argument("--repo", default="feature_defs", help="feature repository folder (default: feature_defs)")
    parser.add_argument("--redis-url", type=redis_url, default=None,
                        help="online store (default: redis://127.0.0.1:$SKEWLESS_REDIS_PORT/0; rediss:// for TLS, "
                             "redis+cluster://HOST:PORT,... for a Redis Cluster); "
                             "the password comes from $SKEWLESS_REDIS_PASSWORD or $SKEWLESS_REDIS_PASSWORD_FILE")
    parser.add_argument("--redis-tls", action="store_true", help="connect to Redis over TLS (rediss://)")
    parser.add_argument("--project", default=None, help="key prefix of the online store (default: $SKEWLESS_PROJECT or skewless)")
    parser.add_argument("--kafka-bootstrap", default=None, help="Kafka for /push (default: the profile's kafka.bootstrap, else 127.0.0.1:$SKEWLESS_KAFKA_PORT)")
    parser.add_argument("--max-entities", type=positive_int, default=1000, help="entities per request (default 1000)")
    parser.add_argument("--max-body-bytes", type=positive_int, default=1 << 20, help="request body limit (default 1 MiB)")
    parser.add_argument("--sample-rate", type=fraction, default=0.0, help="share of served values kept for drift/quality (0..1)")
    parser.add_argument("--redis-password", action=SecretFlag, env="SKEWLESS_REDIS_PASSWORD")
    parser.add_argument("--api-token", action=SecretFlag, env="SKEWLESS_API_TOKEN")
    parser.epilog = ("Secrets come from the environment, never from flags: $SKEWLESS_API_TOKEN (or $SKEWLESS_API_TOKEN_FILE) "
                     "requires 'Authorization: Bearer TOKEN' (/health and /openapi.json stay open); "
                     "$SKEWLESS_REDIS_PASSWORD (or _FILE) logs in to Redis. Limits and timeouts (docs/serving.md): "
                     "$SKEWLESS_REDIS_CONNECT_TIMEOUT_S / $SKEWLESS_REDIS_TIMEOUT_S (3 / 5), $SKEWLESS_KAFKA_TIMEOUT_S (5), "
                     "$SKEWLESS_SERVE_BODY_TIMEOUT_S (10), $SKEWLESS_SERVE_CACHE_BYTES (128 MiB per worker), "
                     "$SKEWLESS_SERVE_MAX_KEY_LENGTH (1024).")


def check_port_free(host: str, port_number: int) -> None:
    """Bind once before starting the workers, so a taken port or a bad host is one line (uvicorn would log it in
    every worker)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port_number))
    except socket.gaierror as exc:
        raise CommandError(f"cannot resolve --host {host!r}: {exc.strerror}", "give an address such as 127.0.0.1") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise CommandError(f"port {port_number} on {host} is already in use", "stop what holds it or pass --port N") from None
        raise CommandError(f"cannot listen on {host}:{port_number}: {exc.strerror}",
                           "pass another --host/--port (ports below 1024 need root)") from None


def run(args: argparse.Namespace) -> int:
    from skewless import config
    from skewless.core.repo import load_repository
    from skewless.serving.server import ServerSettings, serve

    load_repository(args.repo)  # fail here, once, with the loader's message rather than in every worker
    from skewless.serving.online import read_limits

    # a bad secret file, timeout or limit fails here, not in the workers
    target = config.redis_target(args.redis_url)
    config.api_token(), config.kafka_timeout_s(), read_limits()
    if target.cluster:  # a cluster that cannot serve (a seed not in cluster mode, a master down) fails here, in one line
        from skewless.engines.redis_client import check_online_store, open_redis

        client = open_redis(target)
        check_online_store(client, target)
        client.close()
    check_port_free(args.host, args.port)
    # the workers inherit the selected profile (SKEWLESS_CONFIG / SKEWLESS_PROFILE) and read it again
    settings = ServerSettings(repo=os.path.abspath(args.repo), redis_url=args.redis_url, redis_tls=args.redis_tls,
                              project=args.project or config.default_project(),
                              kafka_bootstrap=args.kafka_bootstrap or config.kafka_bootstrap(),
                              max_body_bytes=args.max_body_bytes, max_entities=args.max_entities, sample_rate=args.sample_rate)
    print(f"skewless serve on http://{args.host}:{args.port} ({args.workers or os.cpu_count()} workers)", flush=True)
    serve(settings, host=args.host, port=args.port, workers=args.workers)
    return 0
