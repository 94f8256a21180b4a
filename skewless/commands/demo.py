"""``skewless demo`` (`make demo`): the pipeline end to end on a year of generated orders plus a live stream."""

from __future__ import annotations

import argparse
import sys

NAME = "demo"
HELP = "bring the stack up, load a year of orders, stream, backfill, materialize, then show training and live online features"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options: one command, sensible defaults


def run(args: argparse.Namespace) -> int:
    from skewless.e2e.demo import run_demo

    try:
        return run_demo(lambda line: print(line, flush=True))
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            print("Stop the stack with: make down", file=sys.stderr)
            return 1
        raise
