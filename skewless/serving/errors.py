"""Errors of online reads (re-exported by :mod:`skewless.serving.online`)."""

from __future__ import annotations


class OnlineRequestError(ValueError):
    """Bad input of an online read; the message says what is wrong (the HTTP server answers 400)."""


class AsOfNotAligned(OnlineRequestError):
    """``as_of`` is not a multiple of a tile size stored for a requested view."""


__all__ = ["AsOfNotAligned", "OnlineRequestError"]
