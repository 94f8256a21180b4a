"""``skewless serve``: the HTTP feature server (docs/serving.md)."""

from __future__ import annotations

import argparse
import os

NAME = "serve"
HELP = "HTTP feature server: /get-online-features, /push, /health, /metrics, /openapi.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from skewless.config import HOST

    parser.add_argument("--host", default=HOST, help=f"address to listen on (default {HOST}: loopback only)")
    parser.add_argument("--port", type=int, default=6566, help="port (default 6566)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: the CPU count)")
    parser.add_argument("--repo", default="feature_defs", help="feature repository folder (default: feature_defs)")
    parser.add_argument("--redis-url", default=None, help="online store (default: redis://127.0.0.1:$SKEWLESS_REDIS_PORT/0)")
    parser.add_argument("--redis-password", default=None, help="Redis password (or $SKEWLESS_REDIS_PASSWORD)")
    parser.add_argument("--redis-tls", action="store_true", help="connect to Redis over TLS (rediss://)")
    parser.add_argument("--project", default=None, help="key prefix of the online store (default: $SKEWLESS_PROJECT or skewless)")
    parser.add_argument("--kafka-bootstrap", default=None, help="Kafka for /push (default: 127.0.0.1:$SKEWLESS_KAFKA_PORT)")
    parser.add_argument("--api-token", default=None,
                        help="require 'Authorization: Bearer TOKEN' (or $SKEWLESS_API_TOKEN); /health and /openapi.json stay open")
    parser.add_argument("--max-entities", type=int, default=1000, help="entities per request (default 1000)")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default 1 MiB)")
    parser.add_argument("--sample-rate", type=float, default=0.0, help="share of served values kept for drift/quality (0..1)")


def run(args: argparse.Namespace) -> int:
    from skewless.core.repo import load_repository
    from skewless.serving.server import ServerSettings, serve

    load_repository(args.repo)  # fail here, once, with the loader's message rather than in every worker
    if args.workers is not None and args.workers < 1:
        raise SystemExit("--workers must be at least 1")
    settings = ServerSettings(repo=args.repo, redis_url=args.redis_url, redis_password=None, redis_tls=args.redis_tls,
                              project=args.project, kafka_bootstrap=args.kafka_bootstrap, api_token=None,
                              max_body_bytes=args.max_body_bytes, max_entities=args.max_entities, sample_rate=args.sample_rate)
    # secrets reach the workers through the environment, not the settings JSON
    if args.redis_password:
        os.environ["SKEWLESS_REDIS_PASSWORD"] = args.redis_password
    if args.api_token:
        os.environ["SKEWLESS_API_TOKEN"] = args.api_token
    print(f"skewless serve on http://{args.host}:{args.port} ({args.workers or os.cpu_count()} workers)", flush=True)
    serve(settings, host=args.host, port=args.port, workers=args.workers)
    return 0
