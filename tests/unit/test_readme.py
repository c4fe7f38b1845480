"""README.md documents every config key, exactly as the schema describes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from gigamil.config_doc import END, START, _rows, render_reference, update_readme

REPO = Path(__file__).resolve().parents[2]


def test_readme_config_reference_is_current():
    text = (REPO / "README.md").read_text()
    block = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert block == render_reference(), "run: python -m gigamil.config_doc README.md"


def test_reference_lists_every_leaf_key():
    ref = render_reference()
    for key in [
        "training.max_instances_per_forward_pass",
        "cohorts.<name>.mpp",
        "heatmaps.normalize",
    ]:
        assert f"`{key}`" in ref


def test_required_keys_show_no_default():
    """`cohorts` has no default a config could fall back on: the schema requires it."""
    ref = render_reference()
    assert "| `cohorts` | object | `required` |" in ref
    assert "| `cohorts.<name>.sheet` | string | `required` |" in ref


def _troubleshooting() -> str:
    text = (REPO / "README.md").read_text()
    return text.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]


def test_troubleshooting_names_the_missing_slurm_plugin_and_its_one_line_fix():
    """`snakemake --profile profiles/slurm` without the executor plugin prints ~100 lines of usage
    ending in `invalid choice: 'slurm'`: the Troubleshooting table gives the one-line fix."""
    section = _troubleshooting()
    assert "invalid choice: 'slurm'" in section
    assert 'pip install -e ".[slurm]"' in section


def test_every_command_line_option_is_in_the_readme():
    """Each option of every gigamil subcommand is written in README.md (an audit found
    evaluate's --n-boot, splits' --stratify-by and the global --log documented nowhere)."""
    import argparse

    from gigamil.cli import build_parser

    readme = (REPO / "README.md").read_text()
    missing = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    walk(subparser, f"{name} {sub}")
            missing.extend(
                f"{name} {o}"
                for o in action.option_strings
                if o.startswith("--") and o != "--help" and o not in readme
            )

    walk(build_parser(), "gigamil")
    assert not missing, missing


def test_update_readme_rewrites_only_the_reference_block_and_says_whether_it_changed(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n{START}\nold table\n{END}\nafter\n")
    assert update_readme(readme) is True
    assert readme.read_text() == f"# Title\n{START}\n{render_reference()}\n{END}\nafter\n"
    assert update_readme(readme) is False  # up to date: nothing to do


def test_a_description_over_several_lines_stays_one_table_row():
    node = {"properties": {"k": {"type": "integer", "default": 3, "description": "One\n  two."}}}
    assert _rows(node, "a.") == ["| `a.k` | integer | `3` | One two. |"]


def test_update_readme_without_its_end_marker_changes_nothing(tmp_path):
    """A README that lost its end marker was cut after the start marker: the rest deleted."""
    readme = tmp_path / "README.md"
    text = f"intro\n{START}\nold\n## Troubleshooting\nkeep me\n"
    readme.write_text(text)
    with pytest.raises(ValueError, match="needs the markers"):
        update_readme(readme)
    assert readme.read_text() == text
    readme.write_text("no markers at all\n")
    with pytest.raises(ValueError, match="needs the markers"):
        update_readme(readme)
