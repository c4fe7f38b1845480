"""Cohort sheets written by the tests (importable from every test: pytest puts ``tests/`` on
``sys.path`` for its conftest.py): ``write_sheet`` writes rows as a sheet CSV (and touches their
slide files), ``good_rows`` is a valid cohort of three slides of two patients, ``other_rows`` a
second cohort of other slides and patients; ``CLASSES`` are the demo's classes."""

from __future__ import annotations

from pathlib import Path

CLASSES = ["normal", "lesion"]


def write_sheet(
    tmp_path: Path, rows: list[dict], name: str = "sheet.csv", touch: bool = True
) -> Path:
    cols = list(rows[0])
    lines = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]
    if touch:
        for r in rows:
            if "path" in r and r["path"]:
                (tmp_path / r["path"]).touch()
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def good_rows() -> list[dict]:
    return [
        {"slide_id": "s1", "patient_id": "p1", "label": "normal", "path": "s1.svs"},
        {"slide_id": "s2", "patient_id": "p1", "label": "normal", "path": "s2.svs"},
        {"slide_id": "s3", "patient_id": "p2", "label": "lesion", "path": "s3.svs"},
    ]


def other_rows() -> list[dict]:
    """good_rows() of other slides and patients (a second cohort)."""
    return [
        {
            **r,
            "slide_id": f"x{r['slide_id']}",
            "patient_id": f"x{r['patient_id']}",
            "path": f"x{r['path']}",
        }
        for r in good_rows()
    ]
