"""Exceptions that are shown to the user as a clear message (no traceback)."""

from __future__ import annotations

from collections.abc import Iterable


class GigamilError(Exception):
    """Base class of every error caused by bad input rather than by a bug.

    The CLI prints ``gigamil <command>: error: <message>`` on stderr (one line, or a list of
    problems one item a line) and exits 2.
    The message must name the offending file, slide, key or row and, where possible, the fix.
    """


class ConfigError(GigamilError):
    """config.yaml or a cohort sheet is invalid."""


class SlideError(GigamilError):
    """A slide cannot be opened, read, or has no usable resolution (MPP).

    ``reason`` says what kind of problem it is, for code that decides what to do next (the
    slide reader's plain-image fallback) without parsing the message: ``"unreadable"`` (the
    default: the file cannot be opened or decoded), ``"mpp"`` (opened fine, but no plausible
    microns-per-pixel), ``"too_large"`` (too large for the in-memory reader), ``"truncated"``
    (the file is shorter than its own header says) or ``"unsupported"`` (read, but of a kind of
    image gigamil does not turn into RGB, e.g. CMYK or 32-bit samples).
    """

    REASONS = ("unreadable", "mpp", "too_large", "truncated", "unsupported")

    def __init__(self, message: str, reason: str = "unreadable") -> None:
        if reason not in self.REASONS:
            raise ValueError(f"SlideError reason must be one of {self.REASONS}, got {reason!r}")
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple:  # keep the reason across processes (DataLoader workers)
        return type(self), (str(self), self.reason)


def csv_read_errors() -> tuple[type[Exception], ...]:
    """What ``pandas.read_csv`` raises on a file that is not a readable CSV (binary or wrongly
    encoded, malformed, empty), for ``except csv_read_errors() as exc:`` (pandas imported here,
    when an exception is being matched, not when this module is)."""
    import pandas as pd

    return (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError)


def nearest_name(value: str, names: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The one of ``names`` a user probably meant by ``value``, for a "did you mean" hint: the
    first equal to it but for case and surrounding spaces, else the closest by
    :func:`difflib.get_close_matches` (at least ``cutoff`` similar, which such a case
    difference alone may not reach: ``C`` against ``c``); None when none is."""
    import difflib

    names = [str(n) for n in names]
    folded = str(value).strip().casefold()
    same = [n for n in names if n.strip().casefold() == folded]
    near = same or difflib.get_close_matches(str(value), names, n=1, cutoff=cutoff)
    return near[0] if near else None


# what to do when a slide that opened cannot decode its pixels (tiles overwritten or cut short)
DAMAGED_PIXELS = (
    "; the slide's image data is damaged (an interrupted copy, a failing disk?): copy the slide "
    "again from its source, or remove it from the sheet"
)
