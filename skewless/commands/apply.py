"""``skewless apply``: record the validated repository (views with version + fingerprint) as applied."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from skewless.commands import plan as plan_command

NAME = "apply"
HELP = "validate feature_defs/ and record it as the applied state; refuses semantic changes without a version bump"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    plan_command.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from skewless.core.registry import RefusedChangeError, Registry, RegistryError

    plan = plan_command.load_plan(args)
    if plan is None:
        return 1
    state_path = Path(args.state) if args.state else plan_command.default_state_path()
    try:
        diff = Registry(state_path).apply(plan)
    except RefusedChangeError as exc:
        print(f"skewless {NAME}: {exc}\nnothing was applied", file=sys.stderr)
        return 1
    except RegistryError as exc:
        print(f"skewless {NAME}: {exc}", file=sys.stderr)
        return 1
    print(f"applied to {state_path}:")
    print(diff.render())
    return 0
