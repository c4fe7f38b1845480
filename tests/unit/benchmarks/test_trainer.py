"""benchmarks/trainer.py compares four ways of computing one bag's gradients; they must agree, or
its timings would compare different computations (the original scheme is written there from its
description, so this is its only check)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(("n", "k"), [(23, 5), (16, 16), (9, 1)])
def test_all_methods_give_the_naive_gradients(bench, n, k):
    diffs = bench.check_gradients(att_dim=16, n=n, k=k)
    assert set(diffs) == {"naive", "original", "gigamil", "bare"}
    for method, d in diffs.items():  # NaN (all-zero gradients) fails too
        assert d < 1e-10, (method, d)


def test_paired_ratio_pairs_rounds(bench):
    res = {"a": {"cpu_seconds": [2.0, 9.0, 4.0]}, "b": {"cpu_seconds": [1.0, 3.0, 4.0]}}
    assert bench.paired_ratio(res, "a", "b") == 2.0  # median of 2, 3, 1
    assert bench.paired_ratio(res, "a", "missing") is None
