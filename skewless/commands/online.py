"""``skewless online rebuild|sample``: maintain and inspect the online store.

``rebuild --day D`` restores the online store after Redis lost data, and fills a new key layout after an upgrade
(the layout version is in every key, :data:`skewless.core.layout.LAYOUT_VERSION`; readers never see another
layout's keys):

1. initialise a new epoch (readers answer ``incomplete`` for anything written under the old one);
2. materialize the batch runs of ``--day`` again (``skewless materialize``);
3. replay the stream: the streaming jobs rebuild their tiles from Kafka. Restart each view's job from its
   earliest retained offsets (its window start, at least ``W + H`` back) -- ``make submit JOB=<view>`` with a
   fresh checkpoint -- so ``applied_from_ms`` in the view's meta key covers the windows again. This step is
   printed, not run: it restarts production jobs.

``sample [--view V] [-n N]`` lists entity ids that hold online state (a bounded SCAN), to read them back.

Both work on one Redis and on a Redis Cluster (the profile's ``online_store``, or ``--redis-url redis+cluster://...``):
the cluster is checked first (every master answers, every slot served) and scanned master by master.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

NAME = "online"
HELP = "online store: `online sample` lists real entity ids; `online rebuild --day D` after Redis lost data"
REDIS_TIMEOUT_S = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from skewless.commands import materialize as m

    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    rebuild = sub.add_parser("rebuild", help="new epoch, materialize the day's batch runs again, then replay the stream")
    m.add_arguments(rebuild)
    sample = sub.add_parser("sample", help="entity ids that hold online state (bounded SCAN), one per line")
    sample.add_argument("--view", action="append", default=None, help="only this view (repeatable; default: every view)")
    sample.add_argument("-n", type=int, default=5, help="entity ids per view (default 5)")
    sample.add_argument("--ids", action="store_true", help="print only the ids (join key values, comma-separated)")
    sample.add_argument("--timeout", type=float, default=REDIS_TIMEOUT_S, help="stop scanning after this many seconds (default 5)")
    sample.add_argument("--repo", default="feature_defs", help="feature repository folder (default: feature_defs)")
    sample.add_argument("--redis-url", default=None, help="default redis://127.0.0.1:$SKEWLESS_REDIS_PORT/0")
    sample.add_argument("--project", default=None, help="key prefix (default $SKEWLESS_PROJECT or skewless)")


def open_checked_client(url: str | None) -> Any:
    """The online store at ``url`` (default: the profile's, else the stack's; one Redis or a Redis Cluster) with the
    configured password/CA and connect/read timeouts (:func:`skewless.config.redis_target`), checked once."""
    from skewless.config import redis_target
    from skewless.engines.redis_client import check_online_store, open_redis

    target = redis_target(url)
    client = open_redis(target)
    check_online_store(client, target)
    return client


def _rebuild(args: argparse.Namespace) -> int:
    from batch_jobs.materialize import store_epoch
    from batch_jobs.runner import find_view, parse_day
    from skewless.config import default_project
    from skewless.offline.tables import BatchError
    from skewless.commands import materialize as m
    from skewless.core import layout
    from skewless.core.repo import RepositoryLoadError, load_repository
    from skewless.core.validation import DefinitionError
    from skewless.engines.redis_client import masters

    try:  # every argument is checked before Redis is touched
        parse_day(args.day, "--day")
        repo = load_repository(args.repo)
        for name in args.view or ():
            find_view(repo, name)
    except (BatchError, DefinitionError, RepositoryLoadError) as exc:
        print(f"skewless online rebuild: {exc}", file=sys.stderr)
        return 2
    client = open_checked_client(args.redis_url)
    project = args.project or default_project()
    key = layout.epoch_key(project)
    if client.get(key) is None:
        print(f"{key} is missing: Redis lost its data (or the store moves to layout v{layout.LAYOUT_VERSION}); "
              "initialising a new epoch")
    older = [f"{project}:v{v}:*" for v in range(1, layout.LAYOUT_VERSION)
             if any(node.scan(0, match=f"{project}:v{v}:*", count=1000)[1] for _, node in masters(client))]
    if older:
        print(f"keys of an older layout ({', '.join(older)}) are no longer read; delete them once this layout is filled")
    store_epoch(client, project, init=True)  # step 1 even when no batch run can be materialized yet
    args.init_epoch = True
    status = m.materialize(args)
    if status == 0:
        print("next: replay the stream so its tiles cover the windows again: restart each view's streaming job from "
              "its earliest retained offsets with a fresh checkpoint (`make submit JOB=<view>`); reads answer "
              "`incomplete` until its applied_from_ms covers the window start")
    return status


def _sample(args: argparse.Namespace) -> int:
    from skewless.core.repo import RepositoryLoadError, load_repository
    from skewless.core.validation import DefinitionError
    from skewless.config import default_project
    from skewless.engines.redis_client import masters
    from skewless.monitoring.sampling import sample_entities

    if args.n < 1:
        print("skewless online sample: -n must be at least 1", file=sys.stderr)
        return 2
    try:
        repo = load_repository(args.repo)
    except (DefinitionError, RepositoryLoadError) as exc:
        print(f"skewless online sample: {exc}", file=sys.stderr)
        return 2
    views = {v.name: v for v in repo.views}
    unknown = [v for v in args.view or () if v not in views]
    if unknown:
        print(f"skewless online sample: unknown view {unknown[0]!r}; the repository has: {', '.join(sorted(views))}",
              file=sys.stderr)
        return 2
    client = open_checked_client(args.redis_url)
    found = 0
    try:
        for name in args.view or sorted(views):
            view = views[name]
            names = [k for k, _ in view.entity.join_keys]
            keys: list = []
            for _, node in masters(client):  # a cluster: SCAN each master until n are found
                keys += sample_entities(node, args.project or default_project(), view, args.n - len(keys), args.timeout)
                if len(keys) >= args.n:
                    break
            for key in keys:
                found += 1
                if args.ids:
                    print(",".join(str(v) for v in key))
                else:
                    print(f"{name}  " + ",".join(f"{k}={v}" for k, v in zip(names, key)))
    finally:
        client.close()
    if not found:
        print("skewless online sample: no entity holds online state yet: produce events (`skewless produce`) with a "
              "streaming job running (`skewless submit`), or materialize a batch run (`skewless materialize`)",
              file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    import redis

    handlers = {"rebuild": _rebuild, "sample": _sample}
    handler = handlers.get(getattr(args, "action", None) or "")
    if handler is None:
        print("usage: skewless online {sample [--view V] [-n N] | rebuild --day YYYY-MM-DD [--view V]}", file=sys.stderr)
        return 2
    from skewless.engines.redis_client import OnlineStoreError

    try:
        return handler(args)
    except OnlineStoreError:
        raise  # one line naming the node and the fix (skewless.cli)
    except redis.RedisError as exc:
        print(f"skewless online {args.action}: Redis unreachable ({exc}); is the stack up (`make up`)?", file=sys.stderr)
        return 1
