"""Exceptions that are shown to the user as one clear line (no traceback)."""

from __future__ import annotations


class GigamilError(Exception):
    """Base class of every error caused by bad input rather than by a bug.

    The CLI prints ``gigamil <command>: error: <message>`` on one line of stderr and exits 2.
    The message must name the offending file, slide, key or row and, where possible, the fix.
    """


class ConfigError(GigamilError):
    """config.yaml or a cohort sheet is invalid."""


class SlideError(GigamilError):
    """A slide cannot be opened, read, or has no usable resolution (MPP)."""
