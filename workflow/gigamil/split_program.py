"""The integer program behind :mod:`gigamil.splits`: patients dealt to groups (folds, or val and
train) with balanced counts.

Patients are grouped into *types* (label x stratification values x number of slides); the program
(pulp + CBC) chooses how many patients of each type go to each group so that every group's
per-class patient count, total patient count, per-stratum counts and per-class slide count are as
close as possible to their ideal share; the patients of a type are then dealt to the groups in an
order shuffled by the seed.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


# Objective weights: class balance first, then patient totals and strata, then slide counts.
W_LABEL = 100.0
W_TOTAL = 10.0
W_STRATUM = 10.0
W_LABEL_STRATUM = 5.0
W_SLIDES = 1.0
# Branch-and-bound node limit: keeps the solve deterministic (unlike a time limit) and fast.
MAX_NODES = 200
CUTS = False


def _class_bounds(
    n_cls: int, fractions: Sequence[float], min_per_class: Sequence[int]
) -> list[tuple[int, int]]:
    """(lowest, highest) number of a class's ``n_cls`` patients in each group: the floor and
    ceiling of its ideal share, the low raised to ``min_per_class`` (as far as the class has
    patients). Minimums that cannot all be met (a class with fewer patients than groups) are
    relaxed from the first group on, so later groups (e.g. train after val) keep their minimum.
    """
    n_groups = len(fractions)
    lows = [
        max(math.floor(n_cls * fractions[g] + 1e-9), min(min_per_class[g], n_cls))
        for g in range(n_groups)
    ]
    g = 0
    while sum(lows) > n_cls and g < n_groups:
        lows[g] = max(0, lows[g] - (sum(lows) - n_cls))
        g += 1
    return [
        (lows[g], max(math.ceil(n_cls * fractions[g] - 1e-9), lows[g])) for g in range(n_groups)
    ]


class _CountProgram:
    """The integer program of :func:`_solve_counts` while it is built: variables ``y[t, g]``
    (patients of type t in group g, summing to the type's ``n``) and the objective's terms."""

    def __init__(self, types: pd.DataFrame, fractions: Sequence[float]):
        import pulp

        self.types, self.fractions = types, fractions
        self.n_types, self.n_groups = len(types), len(fractions)
        self.prob = pulp.LpProblem("gigamil_folds", pulp.LpMinimize)
        self.objective: list[Any] = []
        self.y = {
            (t, g): self.var(f"y_{t}_{g}", int(types["n"].iat[t]), "Integer")
            for t in range(self.n_types)
            for g in range(self.n_groups)
        }
        for t in range(self.n_types):
            self.prob += (
                pulp.lpSum(self.y[t, g] for g in range(self.n_groups)) == int(types["n"].iat[t]),
                f"all_{t}",
            )

    def var(self, name: str, up: float | None = None, cat: str = "Continuous"):
        """A new variable >= 0 (at most ``up``) of the program."""
        import pulp

        if hasattr(self.prob, "add_variable"):  # pulp >= 3.3
            return self.prob.add_variable(name, lowBound=0, upBound=up, cat=cat)
        return pulp.LpVariable(name, lowBound=0, upBound=up, cat=cat)

    def balance(
        self, name: str, members: np.ndarray, weight: float, size: np.ndarray | None = None
    ) -> None:
        """Add |count in group - ideal| for the types in ``members`` (weighted by ``size``)."""
        import pulp

        if not members.any():
            return
        idx = np.flatnonzero(members)
        sizes = np.ones(self.n_types) if size is None else size
        total = float(sum(self.types["n"].iat[t] * sizes[t] for t in idx))
        for g in range(self.n_groups):
            ideal = total * self.fractions[g]
            expr = pulp.lpSum(float(sizes[t]) * self.y[t, g] for t in idx)
            dev = self.var(f"d_{name}_{g}")
            self.prob.addConstraint(dev >= expr - ideal, f"dp_{name}_{g}")
            self.prob.addConstraint(dev >= ideal - expr, f"dm_{name}_{g}")
            self.objective.append(weight * dev)

    def add_class_terms(self, min_per_class: Sequence[int]) -> None:
        """Per class: its count in every group within :func:`_class_bounds`, balanced patients
        and slides; then all patients and all slides balanced."""
        import pulp

        types, labels = self.types, self.types["label"].to_numpy()
        for ci, cls in enumerate(sorted(set(labels))):
            members = labels == cls
            n_cls = int(types["n"].to_numpy()[members].sum())
            idx = np.flatnonzero(members)
            bounds = _class_bounds(n_cls, self.fractions, min_per_class)
            for g, (low, high) in enumerate(bounds):
                expr = pulp.lpSum(self.y[t, g] for t in idx)
                self.prob += expr >= low, f"lo_c{ci}_{g}"
                self.prob += expr <= high, f"hi_c{ci}_{g}"
            self.balance(f"c{ci}", members, W_LABEL)
            self.balance(f"s{ci}", members, W_SLIDES, size=types["n_slides"].to_numpy(dtype=float))
        self.balance("all", np.ones(self.n_types, dtype=bool), W_TOTAL)
        n_slides = types["n_slides"].to_numpy(float)
        self.balance("slides", np.ones(self.n_types, dtype=bool), W_SLIDES, size=n_slides)

    def add_strata_terms(self, strata: Sequence[str]) -> None:
        """Every value of every stratification column balanced, alone and per class."""
        labels = self.types["label"].to_numpy()
        for si, col in enumerate(strata):
            values = self.types[col].to_numpy()
            for vi, value in enumerate(sorted(set(values))):
                self.balance(f"k{si}_{vi}", values == value, W_STRATUM)
                for ci, cls in enumerate(sorted(set(labels))):
                    members = (values == value) & (labels == cls)
                    self.balance(f"k{si}_{vi}_c{ci}", members, W_LABEL_STRATUM)

    def solve(self, time_limit: float, start: np.ndarray | None = None) -> np.ndarray | None:
        """Minimise the objective with CBC, from the (T, G) counts ``start`` where given (a
        warm start); (T, G) int counts, None when CBC found no solution within its limits."""
        import pulp

        prob, types = self.prob, self.types
        prob += pulp.lpSum(self.objective)
        for (t, g), var in self.y.items() if start is not None else ():
            var.setInitialValue(int(start[t, g]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # pulp 3.3 announces the 4.0 API
            solver = pulp.PULP_CBC_CMD(
                msg=False,
                timeLimit=time_limit,
                threads=1,
                maxNodes=MAX_NODES,
                cuts=CUTS,
                warmStart=start is not None,
            )
            status = prob.solve(solver)
        log.debug(
            "fold program: %s, objective %.3f", pulp.LpStatus[status], pulp.value(prob.objective)
        )
        counts = np.array(
            [
                [round(self.y[t, g].value() or 0) for g in range(self.n_groups)]
                for t in range(self.n_types)
            ],
            dtype=int,
        )
        if (
            pulp.LpStatus[status] not in ("Optimal", "Not Solved")
            or (counts.sum(axis=1) != types["n"].to_numpy()).any()
        ):
            return None
        return counts


def _feasible_counts(
    types: pd.DataFrame, fractions: Sequence[float], min_per_class: Sequence[int]
) -> np.ndarray:
    """A (T, G) count table within every class's :func:`_class_bounds`: each class's group
    totals raised from their lows towards the ideal shares, then its patients dealt type after
    type to the groups in turn (so each type, hence each stratum, spreads over the groups). The
    start from which CBC improves when it finds no solution of its own within MAX_NODES (hundreds
    of types: many strata)."""
    labels, n = types["label"].to_numpy(), types["n"].to_numpy(dtype=int)
    n_groups = len(fractions)
    counts = np.zeros((len(types), n_groups), dtype=int)
    for cls in sorted(set(labels)):
        idx = np.flatnonzero(labels == cls)
        n_cls = int(n[idx].sum())
        bounds = _class_bounds(n_cls, fractions, min_per_class)
        left = [low for low, _ in bounds]
        for _ in range(n_cls - sum(left)):  # each to the open group furthest below its share
            below = [g for g in range(n_groups) if left[g] < bounds[g][1]]
            left[max(below, key=lambda g: n_cls * fractions[g] - left[g])] += 1
        g = 0
        for t in idx:
            for _ in range(n[t]):
                while left[g] == 0:
                    g = (g + 1) % n_groups
                counts[t, g] += 1
                left[g] -= 1
                g = (g + 1) % n_groups
    return counts


def _solve_counts(
    types: pd.DataFrame,
    fractions: Sequence[float],
    strata: Sequence[str],
    min_per_class: Sequence[int],
    time_limit: float = 60.0,
) -> np.ndarray:
    """Integer program: how many patients of each type go to each group.

    Args:
        types: one row per type with columns ``label``, ``n_slides``, ``n`` (patients of this
            type) and the ``strata`` columns.
        fractions: (G,) target share of each group, summing to 1.
        strata: stratification columns to balance besides the label.
        min_per_class: (G,) minimum number of patients of every class in each group (applied only
            as far as the class has patients).

    Returns:
        (T, G) int array of patient counts per type and group: CBC's best within
        :data:`MAX_NODES` nodes, from :func:`_feasible_counts` when it finds none of its own.
    """

    def solve(start: np.ndarray | None = None) -> np.ndarray | None:
        program = _CountProgram(types, fractions)
        program.add_class_terms(min_per_class)
        program.add_strata_terms(strata)
        return program.solve(time_limit, start)

    counts = solve()
    if counts is None:  # no solution within MAX_NODES: again from a feasible one
        log.debug("fold program: no solution within %d nodes; again from a start", MAX_NODES)
        start = _feasible_counts(types, fractions, min_per_class)
        counts = solve(start)
        if counts is None:  # CBC kept none (the start is within the bounds by construction)
            counts = start
    return counts


def assign_groups(
    patients: pd.DataFrame,
    fractions: Sequence[float],
    seed: int,
    stratify_by: Sequence[str] = (),
    min_per_class: Sequence[int] | None = None,
) -> np.ndarray:
    """Assign each patient to a group (fold, or val/train) with balanced counts.

    Args:
        patients: output of :func:`patient_table` (one row per patient).
        fractions: (G,) target shares of the groups.
        seed: seed of the order in which patients of one type are dealt to the groups.
        stratify_by: columns of ``patients`` to balance besides the label.
        min_per_class: (G,) minimum patients of each class per group (default 0).

    Returns:
        (P,) int group index per patient, aligned with ``patients`` rows.
    """
    keys = ["label", *stratify_by, "n_slides"]
    grouped = patients.groupby(keys, sort=True)
    types = grouped.size().rename("n").reset_index()
    type_of = grouped.ngroup().to_numpy()  # (P,) type index of each patient
    mins = list(min_per_class) if min_per_class is not None else [0] * len(fractions)
    counts = _solve_counts(types, fractions, stratify_by, mins)
    rng = np.random.default_rng(seed)
    group = np.full(len(patients), -1, dtype=int)
    for t in range(len(types)):
        members = np.flatnonzero(type_of == t)
        members = members[rng.permutation(len(members))]
        group[members] = np.repeat(np.arange(len(fractions)), counts[t])
    return group
