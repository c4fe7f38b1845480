"""gigamil.evaluate.tables: the metrics page the Snakemake report shows inline."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gigamil.evaluate.tables import write_metrics_html


def test_metrics_page_has_one_header_row_with_the_scope_in_its_corner(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {"n_slides": [4, 24], "auc": [1.0, float("nan")]},
        index=pd.Index(["fold0", "pooled"], name="scope"),
    )
    page = tmp_path / "metrics.html"
    write_metrics_html(table, page, "demo metrics")
    html = page.read_text()
    head = html[html.index("<thead>") : html.index("</thead>")]
    assert head.count("<tr") == 1  # not a second row holding only the index name
    assert "<th>scope</th>" in head and "<th>auc</th>" in head
    body = html[html.index("<tbody>") :]
    assert "<th>fold0</th>" in body and "<td>1.000</td>" in body and "<td>24</td>" in body
