"""Fixtures of the gigamil.viz tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def saved_axes(monkeypatch: pytest.MonkeyPatch) -> list:
    """The first axes of each matplotlib figure saved during the test, in order."""
    from matplotlib.figure import Figure

    axes: list = []
    savefig = Figure.savefig
    monkeypatch.setattr(
        Figure, "savefig", lambda f, *a, **kw: axes.append(f.axes[0]) or savefig(f, *a, **kw)
    )
    return axes
