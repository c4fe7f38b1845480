"""gigamil.split_program: the integer program that deals patients to balanced groups."""

from __future__ import annotations

import pandas as pd

from gigamil.split_program import _class_bounds, _feasible_counts


def test_class_bounds_relax_unmeetable_minimums_from_the_first_group():
    assert _class_bounds(10, [0.2, 0.2, 0.6], [1, 1, 1]) == [(2, 2), (2, 2), (6, 6)]
    assert _class_bounds(7, [0.2, 0.2, 0.6], [1, 1, 1]) == [(1, 2), (1, 2), (4, 5)]
    assert _class_bounds(2, [0.2, 0.2, 0.6], [1, 1, 1]) == [(0, 1), (1, 1), (1, 2)]


def test_class_bounds_relax_a_minimum_only_as_far_as_needed():
    # minimums of 3 + 3 for 4 patients: the first group gives up 2, not all of its 3
    assert _class_bounds(4, [0.5, 0.5], [3, 3]) == [(1, 2), (3, 3)]


def test_the_start_for_the_solver_keeps_every_class_within_its_bounds():
    """The table CBC starts from when it finds no assignment of its own: every type's patients
    all dealt, every class's group counts within _class_bounds, a type spread over the groups."""
    types = pd.DataFrame(
        {"label": ["a", "a", "a", "b", "b"], "n_slides": [1, 2, 1, 1, 3], "n": [7, 3, 4, 2, 1]}
    )
    fractions, mins = [0.2, 0.8], [1, 1]
    counts = _feasible_counts(types, fractions, mins)
    assert counts.sum(axis=1).tolist() == types["n"].tolist()
    for cls, n_cls in (("a", 14), ("b", 3)):
        per_group = counts[types["label"].to_numpy() == cls].sum(axis=0)
        for got, (low, high) in zip(per_group, _class_bounds(n_cls, fractions, mins), strict=True):
            assert low <= got <= high
    assert (counts[0] > 0).all()  # the 7 patients of the first type in both groups
