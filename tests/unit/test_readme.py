"""README.md documents every config key, exactly as the schema describes it."""

from __future__ import annotations

from pathlib import Path

from gigamil.config_doc import END, START, render_reference

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
