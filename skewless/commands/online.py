"""``skewless online rebuild``: restore the online store after Redis lost data.

1. initialise a new epoch (readers answer ``incomplete`` for anything written under the old one);
2. materialize the batch runs of ``--day`` again (``skewless materialize``);
3. replay the stream: the streaming jobs rebuild their tiles from Kafka. Restart each view's job from its
   earliest retained offsets (its window start, at least ``W + H`` back) -- ``make submit JOB=<view>`` with a
   fresh checkpoint -- so ``applied_from_ms`` in the view's meta key covers the windows again. This step is
   printed, not run: it restarts production jobs.
"""

from __future__ import annotations

import argparse
import sys

NAME = "online"
HELP = "online store maintenance: `skewless online rebuild --day D` after Redis lost data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from skewless.commands import materialize as m

    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    rebuild = sub.add_parser("rebuild", help="new epoch, materialize the day's batch runs again, then replay the stream")
    m.add_arguments(rebuild)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) != "rebuild":
        print("usage: skewless online rebuild --day YYYY-MM-DD [--view V]", file=sys.stderr)
        return 2
    import redis

    from skewless.config import HOST, ports
    from skewless.core import layout
    from skewless.commands import materialize as m
    from skewless.config import default_project

    client = redis.Redis.from_url(args.redis_url or f"redis://{HOST}:{ports().redis}/0")
    key = layout.epoch_key(args.project or default_project())
    if client.get(key) is None:
        print(f"{key} is missing: Redis lost its data; initialising a new epoch")
    args.init_epoch = True
    status = m.materialize(args)
    print("next: replay the stream so its tiles cover the windows again: restart each view's streaming job from "
          "its earliest retained offsets with a fresh checkpoint (`make submit JOB=<view>`); reads answer "
          "`incomplete` until its applied_from_ms covers the window start")
    return status
