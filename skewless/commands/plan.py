"""``skewless plan``: validate the feature repository and show what streaming and batch compute."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "plan"
HELP = "validate feature_defs/ and print what streaming and batch compute, and the diff against the applied state"


def default_state_path() -> Path:
    from skewless.config import paths

    return paths().state / "registry.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo", default="feature_defs", help="feature repository folder (default: feature_defs)")
    parser.add_argument("--schemas", default=None, help="JSON Schema folder (default: schemas/ next to the repository)")
    parser.add_argument("--state", default=None, help="applied state file (default: .skewless/registry.json)")


def load_plan(args: argparse.Namespace):
    """Load, validate and plan the repository; prints problems and returns None on failure."""
    from skewless.core.plan import build_plan
    from skewless.core.repo import RepositoryLoadError, load_repository
    from skewless.core.validation import DefinitionError

    try:
        repo = load_repository(args.repo, schemas_dir=args.schemas)
    except (DefinitionError, RepositoryLoadError) as exc:
        print(f"skewless {NAME}: {exc}", file=sys.stderr)
        return None
    return build_plan(repo)


def run(args: argparse.Namespace) -> int:
    from skewless.core.compiler import ExplainCompiler
    from skewless.core.registry import Registry, RegistryError

    plan = load_plan(args)
    if plan is None:
        return 1
    n_views, n_services = len(plan.views), len(plan.services)
    print(f"skewless plan: {n_views} view{'s' * (n_views != 1)}, {n_services} feature service{'s' * (n_services != 1)}\n")
    print(ExplainCompiler().explain(plan))
    state_path = Path(args.state) if args.state else default_state_path()
    try:
        diff = Registry(state_path).diff(plan)
    except RegistryError as exc:
        print(f"\nskewless plan: {exc}", file=sys.stderr)
        return 1
    note = " (nothing applied yet)" if diff.first_apply else ""
    print(f"\nchanges against {state_path}{note}")
    print(diff.render())
    if diff.refused:
        print(f"\nskewless plan: `skewless apply` would refuse {len(diff.refused)} change(s); see REFUSED above", file=sys.stderr)
        return 1
    return 0
