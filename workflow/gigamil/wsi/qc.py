"""The per-cohort QC table: one row per slide from the mask JSON and the patch store attrs."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from gigamil.data.store import open_store

COLUMNS = [
    "slide_id",
    "source_path",
    "width",
    "height",
    "slide_mpp",
    "slide_mpp_source",
    "tissue_fraction",
    "n_patches",
    "target_mpp",
    "effective_mpp",
    "patch_px",
    "level",
    "mask_seconds",
    "extract_seconds",
    "warnings",
]


def qc_row(slide_id: str, mask_json: str | Path, store: str | Path) -> dict:
    """One QC row from a mask JSON sidecar and a patch store."""
    info = json.loads(Path(mask_json).read_text())
    attrs = dict(open_store(store).attrs)
    width, height = attrs.get("slide_dimensions", info.get("slide_dimensions", [None, None]))
    warnings = list(dict.fromkeys([*info.get("warnings", []), *attrs.get("warnings", [])]))
    return {
        "slide_id": slide_id,
        "source_path": attrs.get("source_path", info.get("slide")),
        "width": width,
        "height": height,
        "slide_mpp": attrs.get("slide_mpp", info.get("slide_mpp")),
        "slide_mpp_source": attrs.get("slide_mpp_source", info.get("slide_mpp_source")),
        "tissue_fraction": info.get("tissue_fraction"),
        "n_patches": attrs.get("n_patches"),
        "target_mpp": attrs.get("target_mpp"),
        "effective_mpp": attrs.get("effective_mpp"),
        "patch_px": attrs.get("patch_px"),
        "level": attrs.get("level"),
        "mask_seconds": info.get("seconds"),
        "extract_seconds": attrs.get("seconds"),
        "warnings": " | ".join(warnings),
    }


def qc_table(
    slide_ids: Sequence[str], mask_jsons: Sequence[str | Path], stores: Sequence[str | Path]
) -> pd.DataFrame:
    """The QC table of a cohort (rows in the given slide order)."""
    if not len(slide_ids) == len(mask_jsons) == len(stores):
        raise ValueError("slide_ids, mask_jsons and stores must have the same length")
    rows = [qc_row(s, m, z) for s, m, z in zip(slide_ids, mask_jsons, stores, strict=True)]
    return pd.DataFrame(rows, columns=COLUMNS)


def write_qc_table(
    out_csv: str | Path,
    slide_ids: Sequence[str],
    mask_jsons: Sequence[str | Path],
    stores: Sequence[str | Path],
) -> pd.DataFrame:
    """Write the QC CSV; return the table."""
    df = qc_table(slide_ids, mask_jsons, stores)
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_csv, index=False)
    return df
