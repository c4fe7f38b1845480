"""gigamil.errors: the "did you mean" name shared by the config, sheet and subgroup checks."""

from __future__ import annotations

from gigamil.errors import nearest_name


def test_nearest_name_prefers_another_case_then_the_closest_spelling():
    names = ["site", "Site_code", "scanner"]
    assert nearest_name("SITE", names) == "site"  # case alone: difflib's ratio misses it
    assert nearest_name(" scanner ", names) == "scanner"
    assert nearest_name("sitee", names) == "site"
    assert nearest_name("hospital", names) is None
    assert nearest_name("C", ["b", "c"]) == "c"
    assert nearest_name("lesoin", ["normal", "lesion"], cutoff=0.75) == "lesion"
    assert nearest_name("x", []) is None
