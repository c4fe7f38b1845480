"""benchmarks/seed_table.py: docs/results.md's table over draws and seeds comes from the committed records."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _load():
    spec = importlib.util.spec_from_file_location("seed_table", REPO / "benchmarks/seed_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_table_rows_are_in_readme_and_reruns_agree():
    mod = _load()
    table = mod.table()
    readme = (REPO / "docs" / "results.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(mod.COHORTS)  # header, the demo and draws 0-11 (6-11 held out)
    for row in rows:
        assert row in readme, (
            f"docs/results.md's table is stale: python benchmarks/seed_table.py\n{row}"
        )
    runs, checks = mod.collect()
    assert checks  # the records overlap: the reruns must match the earlier runs to one pair
    for cell in checks:
        ours, table_value = (float(x) for x in cell.replace(",", "").split()[-4::3])
        assert abs(ours - table_value) <= 0.0075, cell
    base = mod.baselines()
    assert set(base) == set(mod.COHORTS) and all(0.5 < v[0] < 1 for v in base.values())
