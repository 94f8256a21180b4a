"""Subcommands of the ``skewless`` CLI; one module per command (see skewless.cli)."""
