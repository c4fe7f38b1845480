"""gigamil.split_program: the integer program that deals patients to balanced groups."""

from __future__ import annotations

from gigamil.split_program import _class_bounds


def test_class_bounds_relax_unmeetable_minimums_from_the_first_group():
    assert _class_bounds(10, [0.2, 0.2, 0.6], [1, 1, 1]) == [(2, 2), (2, 2), (6, 6)]
    assert _class_bounds(7, [0.2, 0.2, 0.6], [1, 1, 1]) == [(1, 2), (1, 2), (4, 5)]
    assert _class_bounds(2, [0.2, 0.2, 0.6], [1, 1, 1]) == [(0, 1), (1, 1), (1, 2)]


def test_class_bounds_relax_a_minimum_only_as_far_as_needed():
    # minimums of 3 + 3 for 4 patients: the first group gives up 2, not all of its 3
    assert _class_bounds(4, [0.5, 0.5], [3, 3]) == [(1, 2), (3, 3)]
