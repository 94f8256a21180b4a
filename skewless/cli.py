"""The ``skewless`` command line. Each subcommand lives in its own module under
``skewless.commands`` and exposes ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.

Bad input is one line, never a traceback: argparse types refuse bad values, and :func:`main` turns the
known error classes (:data:`USER_ERRORS`) into ``skewless <command>: error: ...`` with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import NoReturn

from skewless import __version__
from skewless import commands as _commands_pkg
from skewless.commands import CommandError
from skewless.config import ConfigError
from skewless.core.registry import RegistryError
from skewless.core.repo import RepositoryLoadError, UnknownFeatureError
from skewless.core.validation import DefinitionError
from skewless.stack.base import StackError

# what a user can cause and fix (input, configuration, environment): printed as one line, exit status 2
USER_ERRORS: tuple[type[BaseException], ...] = (CommandError, ConfigError, RepositoryLoadError, UnknownFeatureError,
                                                DefinitionError, RegistryError, StackError)


def _command_modules():
    for info in sorted(pkgutil.iter_modules(_commands_pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        yield importlib.import_module(f"{_commands_pkg.__name__}.{info.name}")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error: ``skewless <command>: error: ... (see --help)``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="skewless", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"skewless {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
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
