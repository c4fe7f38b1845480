"""Argument types with ranges for the command line: an out-of-range value is refused by argparse
(``gigamil patches: error: argument --stride: must be >= 1, got 0``) instead of being used or
silently replaced. The ranges are those of the matching config.yaml keys in the JSON schema."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def bounded(
    kind: type[int] | type[float],
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    exclusive_minimum: bool = False,
) -> Callable[[str], int | float]:
    """An argparse ``type`` that parses ``kind`` and checks ``minimum <= value <= maximum``
    (``minimum < value`` with ``exclusive_minimum``); NaN and infinity are refused.

    Raises (when argparse calls it):
        argparse.ArgumentTypeError: not a ``kind``, or out of range; argparse prints it with the
            option's name and exits with status 2.
    """

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{'an integer' if kind is int else 'a number'} is needed, got {text!r}"
            ) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"a finite number is needed, got {text!r}")
        if minimum is not None and exclusive_minimum and not value > minimum:
            raise argparse.ArgumentTypeError(f"must be > {minimum:g}, got {text}")
        if minimum is not None and not exclusive_minimum and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum:g}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum:g}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid <type> value"
    return parse


POSITIVE = bounded(float, 0, exclusive_minimum=True)  # µm/px and other scales
# a slide's (or tile's) µm/px: gigamil.wsi.mpp's MPP_MIN..MPP_MAX, the range every slide must be in
SLIDE_MPP = bounded(float, 0.05, 100.0)
NON_NEGATIVE = bounded(float, 0)
FRACTION = bounded(float, 0, 1)
AT_LEAST_ONE = bounded(int, 1)
NON_NEGATIVE_INT = bounded(int, 0)  # seeds


def SLIDES_PER_PATIENT(text: str) -> str:  # noqa: N802 - an argparse type, named like the others
    """``N`` or ``LO-HI`` (``gigamil demo --slides-per-patient``; the form is
    :func:`gigamil.demo_io.slides_range`'s), returned stripped; the range itself is checked by
    :func:`gigamil.demo_io.check_cohort_size`."""
    from gigamil.demo_io import slides_range
    from gigamil.errors import GigamilError

    try:
        slides_range(text)
    except GigamilError:
        raise argparse.ArgumentTypeError(f"give N or LO-HI, e.g. 2 or 1-2 (got {text!r})") from None
    return text.strip()
