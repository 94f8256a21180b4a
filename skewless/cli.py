"""The ``skewless`` command line. Each subcommand lives in its own module under
``skewless.commands`` and exposes ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.

Bad input is one line, never a traceback: argparse types refuse bad values, and :func:`main` turns the
known error classes (:data:`USER_ERRORS`) into ``skewless <command>: error: ...`` with exit status 2.

Every command runs under one profile (docs/deploy.md): ``--profile NAME`` (before or after the command) or
``$SKEWLESS_PROFILE``, of the profile file of its ``--repo`` (``feature_defs/skewless.yaml``) or
``$SKEWLESS_CONFIG``; the file is checked before the command starts.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Any, NoReturn

from skewless import __version__
from skewless import commands as _commands_pkg
from skewless.commands import CommandError, DefaultsHelpFormatter
from skewless.config import ConfigError, selected
from skewless.core.registry import RegistryError
from skewless.core.repo import RepositoryLoadError, UnknownFeatureError
from skewless.core.validation import DefinitionError
from skewless.engines import EngineSetupError
from skewless.stack.base import StackError

# what a user can cause and fix (input, configuration, environment): printed as one line, exit status 2
USER_ERRORS: tuple[type[BaseException], ...] = (CommandError, ConfigError, RepositoryLoadError, UnknownFeatureError,
                                                DefinitionError, RegistryError, StackError, EngineSetupError)


def _command_modules():
    for info in sorted(pkgutil.iter_modules(_commands_pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        yield importlib.import_module(f"{_commands_pkg.__name__}.{info.name}")


DESCRIPTION = """\
skewless is a streaming-first feature pipeline. Declare entities, event sources
and windowed aggregations once in feature_defs/; skewless compiles them into
Flink jobs that keep the online store (Redis) fresh and Spark jobs that fill
the offline store (Iceberg), so a model is served the same value its training
set saw."""

EPILOG = """\
Run 'skewless COMMAND --help' for a command's options. New here? 'make demo'
starts the local stack and runs the whole pipeline on sample data; README.md
has the tour."""

# the top-level help's overview: (heading, [(command, one-line summary)]), in the order a newcomer meets them;
# every command appears exactly once (tests/unit/test_cli_help.py)
OVERVIEW: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("get started", (
        ("demo", "start the stack and run the whole pipeline on sample data"),
        ("doctor", "check the tools, jars and ports skewless needs"),
    )),
    ("define features (feature_defs/)", (
        ("plan", "validate the definitions; show what stream and batch compute"),
        ("apply", "record the definitions as the applied state"),
    )),
    ("stream", (
        ("stack", "start, stop or inspect Kafka, Flink, Redis and the archive"),
        ("produce", "send generated (or saved) events of a source to Kafka"),
        ("submit", "start the streaming job of a feature view on Flink"),
        ("jobs", "list (or cancel) the Flink jobs of the local cluster"),
        ("promote", "serve the other declared version of a view (upgrade, rollback)"),
    )),
    ("batch", (
        ("archive", "archive Kafka sources into raw Iceberg tables; show progress"),
        ("backfill", "recompute feature views over a date range with Spark"),
        ("materialize", "load a batch run's feature rows into the online store"),
    )),
    ("serve and train", (
        ("serve", "HTTP feature server (online features, push, metrics)"),
        ("training-set", "point-in-time correct training data to Parquet"),
        ("online", "online store maintenance (rebuild after Redis lost data)"),
    )),
    ("check", (
        ("monitor", "freshness, quality, drift and consistency of the views"),
        ("parity", "prove stream, batch and the oracle agree, end to end"),
    )),
)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error: ``skewless <command>: error: ... (see --help)``, exit status 2; every
    (sub)command's help shows its options' defaults."""

    def __init__(self, *args: Any, formatter_class: type[argparse.HelpFormatter] = DefaultsHelpFormatter,
                 **kwargs: Any) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def overview(helps: dict[str, str]) -> str:
    """The command list of ``skewless --help``: one line per command of ``helps`` (name -> HELP), grouped as
    :data:`OVERVIEW` says; a command missing there is listed under "other" with its HELP."""
    listed = [(heading, [(n, summary) for n, summary in commands if n in helps]) for heading, commands in OVERVIEW]
    named = {n for _, commands in listed for n, _ in commands}
    listed.append(("other", [(n, text) for n, text in sorted(helps.items()) if n not in named]))
    width = max(map(len, helps))
    lines = ["commands:"]
    for heading, commands in listed:
        if commands:
            lines.append(f"  {heading}:")
            lines += [f"    {n:{width}}  {summary}" for n, summary in commands]
    return "\n".join(lines)


PROFILE_HELP = ("named profile of the profile file (<repo>/skewless.yaml or $SKEWLESS_CONFIG) saying where Kafka, "
                "Redis, Flink, the catalog and Spark are (default: $SKEWLESS_PROFILE, else the file's default_profile, "
                "else local; docs/deploy.md)")


def leaf_parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` if it has no subcommands, else the parsers of its (nested) subcommands."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [parser]
    return [leaf for a in subs for p in dict.fromkeys(a.choices.values()) for leaf in leaf_parsers(p)]


def build_parser() -> argparse.ArgumentParser:
    modules = list(_command_modules())
    parser = ArgumentParser(prog="skewless", usage="skewless [-h] [--version] [--profile NAME] COMMAND [ARGS ...]",
                            description=f"{DESCRIPTION}\n\n{overview({m.NAME: m.HELP for m in modules})}",
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"skewless {__version__}")
    parser.add_argument("--profile", default=None, metavar="NAME", help=PROFILE_HELP)
    # the overview lists the commands; argparse's own list (wrapped mid-summary) is suppressed
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS, prog=parser.prog)
    for module in modules:
        p = sub.add_parser(module.NAME, description=module.HELP)
        module.add_arguments(p)
        for leaf in leaf_parsers(p):  # SUPPRESS: a leaf without --profile keeps the top level's value
            leaf.add_argument("--profile", default=argparse.SUPPRESS, metavar="NAME", help=PROFILE_HELP)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()  # defaults read the configuration (ports)
    except ConfigError as exc:
        print(f"skewless: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        with selected(getattr(args, "repo", None), args.profile):
            return int(args._run(args) or 0)
    except USER_ERRORS as exc:
        print(f"skewless {args.command}: error: {_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"skewless {args.command}: interrupted", file=sys.stderr)
        return 130


def _message(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
