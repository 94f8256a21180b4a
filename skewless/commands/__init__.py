"""Subcommands of the ``skewless`` CLI; one module per command (see skewless.cli), and what they share:
:class:`CommandError` (bad input: one line saying what is wrong and the fix; :func:`skewless.cli.main` prints
it as ``skewless <command>: error: ... (fix: ...)`` and exits 2), argparse types that refuse a bad value
before the command starts (argparse prints their message the same way) and the help formatter of every
command (:class:`DefaultsHelpFormatter`)."""

from __future__ import annotations

import argparse
import math
import os
from urllib.parse import urlsplit

from skewless.config import ConfigError, check_redis_url


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Help that ends each option's text with ``(default: X)`` when it has a default and does not name one itself
    (unlike :class:`argparse.ArgumentDefaultsHelpFormatter`: no ``(default: None)``, ``False`` or doubled default)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if not text or text == argparse.SUPPRESS or "default" in text.lower():
            return text
        default = action.default
        if default is None or default is argparse.SUPPRESS or isinstance(default, bool) or default in ("", [], ()):
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return f"{text} (default: %(default)s)"
        return text


class CommandError(Exception):
    """Bad input or an unusable environment, reported as one line (never a traceback)."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.args[0]} (fix: {self.fix})" if self.fix else str(self.args[0])


def port(text: str) -> int:
    """A TCP port, 1..65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is out of range; use 1-65535")
    return value


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def non_negative_float(text: str) -> float:
    value = float(_number(text, float))
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must not be negative")
    return value


def positive_float(text: str) -> float:
    value = float(_number(text, float))
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be greater than 0")
    return value


def fraction(text: str) -> float:
    """A share between 0 and 1 (inclusive)."""
    value = float(_number(text, float))
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction; use a number from 0 to 1 (e.g. 0.05 for 5%)")
    return value


def existing_file(text: str) -> str:
    """A path to a readable regular file."""
    if not os.path.isfile(text):
        what = "is a folder" if os.path.isdir(text) else "does not exist"
        raise argparse.ArgumentTypeError(f"{text} {what}; give the path of a file")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text} is not readable")
    return text


def redis_url(text: str) -> str:
    """A Redis URL without a password (the password comes from SKEWLESS_REDIS_PASSWORD[_FILE], not argv)."""
    try:
        url = check_redis_url(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if urlsplit(url).password is not None:
        raise argparse.ArgumentTypeError(
            "the URL carries a password, which every user can read in `ps`; drop it from the URL and set "
            "SKEWLESS_REDIS_PASSWORD or SKEWLESS_REDIS_PASSWORD_FILE")
    return url


class SecretFlag(argparse.Action):
    """A removed flag that took a secret: refuses with the environment variable to use (without echoing the value)."""

    def __init__(self, option_strings: list[str], dest: str, env: str, **kwargs: object) -> None:
        self.env = env
        super().__init__(option_strings, dest, nargs="?", help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        parser.error(f"{option_string} was removed: a secret on the command line is visible to every user in `ps`; "
                     f"set {self.env} or {self.env}_FILE (a file holding it) instead")
