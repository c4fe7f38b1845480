"""The gigamil console command."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import pytest

from gigamil.cli import build_parser, main
from gigamil.errors import GigamilError


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "COMMAND" in out
    for mod_name in build_parser()._subparsers._group_actions[0].choices:  # noqa: SLF001
        assert mod_name in out


def test_console_script_installed():
    exe = shutil.which("gigamil")
    assert exe, "the gigamil console script is not on PATH (pip install -e .)"
    res = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert res.stdout.startswith("gigamil ")
    res = subprocess.run(
        [sys.executable, "-m", "gigamil", "--help"], capture_output=True, text=True
    )
    assert res.returncode == 0 and "usage: gigamil" in res.stdout


def test_gigamil_error_is_one_line(monkeypatch, capsys):
    """A GigamilError from any subcommand becomes exactly one stderr line and exit code 2."""

    def boom(args: argparse.Namespace) -> None:
        raise GigamilError("slide x.svs: something\nwent   wrong")

    ns = argparse.Namespace(command="mask", _run=boom, log=None, verbose=False)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", lambda self, argv=None: ns)
    assert main(["mask"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gigamil mask: error: slide x.svs: something went wrong"]


def test_a_listed_error_keeps_one_line_per_item() -> None:
    """A sheet's problems, one per line, stay readable (they ran together as one line)."""
    from gigamil.cli import error_text

    exc = GigamilError("s.csv: 2 problems:\n- column 'MPP' means\n  'mpp'\n\n- missing  path")
    assert error_text(exc) == (
        "s.csv: 2 problems:\n  - column 'MPP' means\n    'mpp'\n  - missing path"
    )
    # a YAML error's snippet keeps its alignment, so the caret points at the column
    exc = GigamilError("c.yaml: not valid YAML:\n    a: [1,\n         ^")
    assert error_text(exc) == "c.yaml: not valid YAML:\n      a: [1,\n           ^"


def test_os_errors_are_one_line_and_demo_refuses_a_file_as_outdir(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main(["demo", str(a_file)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gigamil demo: error: OUTDIR {a_file} exists and is not a directory"]
    # an OSError from deeper down (here: a directory below a file) is one line too
    assert main(["demo", str(a_file / "sub")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gigamil demo: error: Not a directory: ")
    assert str(a_file) in err[0]


PATCHES = ["patches", "s.svs", "--out", "o.zarr"]  # + --mpp and --patch-px
HEATMAP = ["heatmap", "--store", "s.zarr", "--attention", "a.npy", "--out", "h"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [*PATCHES, "--mpp", "0.5", "--patch-px", "64", "--stride", "0"],
            "--stride: must be >= 1, got 0",
        ),
        ([*PATCHES, "--mpp", "0.5", "--patch-px", "4"], "--patch-px: must be >= 8, got 4"),
        ([*PATCHES, "--mpp", "-1", "--patch-px", "64"], "--mpp: must be > 0, got -1"),
        (
            [*PATCHES, "--mpp", "nan", "--patch-px", "64"],
            "--mpp: a finite number is needed, got 'nan'",
        ),
        (
            [*PATCHES, "--mpp", "0.5", "--patch-px", "64", "--jpeg-quality", "101"],
            "--jpeg-quality: must be <= 100, got 101",
        ),
        (
            ["mask", "s.svs", "--out", "m.png", "--slide-mpp", "-1"],
            "--slide-mpp: must be >= 0.05, got -1",
        ),
        (["demo", "d", "--tile-mpp", "500"], "--tile-mpp: must be <= 100, got 500"),
        ([*HEATMAP, "--alpha", "5"], "--alpha: must be <= 1, got 5"),
        ([*HEATMAP, "--top-k", "x"], "--top-k: an integer is needed, got 'x'"),
        (["demo", "d", "--tile-mpp", "0"], "--tile-mpp: must be >= 0.05, got 0"),
        (["demo", "d", "--seed", "-1"], "--seed: must be >= 0, got -1"),
        (
            ["splits", "--sheet", "s.csv", "--out", "f.csv", "--seed", "-1"],
            "--seed: must be >= 0, got -1",
        ),
        (["demo", "d", "--tile-mpp", "inf"], "--tile-mpp: a finite number is needed, got 'inf'"),
        (
            [
                "evaluate",
                "--folds",
                "f.csv",
                "--predictions",
                "p.csv",
                "--out",
                "e",
                "--n-boot",
                "0",
            ],
            "--n-boot: must be >= 1, got 0",
        ),
        (
            ["ensemble", "--predictions", "p.csv", "--cohort", "c", "--out", "e", "--seed", "-1"],
            "--seed: must be >= 0, got -1",
        ),
        (
            [
                *["train", "--config", "c.yaml", "--train-csv", "t.csv", "--val-csv", "v.csv"],
                *["--out", "o", "--threads", "0"],
            ],
            "--threads: must be >= 1, got 0",
        ),
    ],
)
def test_out_of_range_options_are_refused_by_name(args, message, capsys):
    """A value outside the matching config key's range stops the command (exit status 2) with
    the option named, instead of being used (--alpha 5) or replaced (--stride 0)."""
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(args)
    assert exc.value.code == 2
    assert f"argument {message}" in capsys.readouterr().err


def test_slide_mpp_range_matches_the_package():
    """--tile-mpp 500 made a demo cohort that every later command refused as implausible."""
    from gigamil.commands._argtypes import SLIDE_MPP
    from gigamil.wsi.mpp import MPP_MAX, MPP_MIN

    assert SLIDE_MPP(str(MPP_MIN)) == MPP_MIN and SLIDE_MPP(str(MPP_MAX)) == MPP_MAX
    for outside in (MPP_MIN * 0.99, MPP_MAX * 1.01):
        with pytest.raises(argparse.ArgumentTypeError):
            SLIDE_MPP(str(outside))


def test_evaluate_and_ensemble_name_what_is_wrong_with_their_files(tmp_path, capsys):
    """An empty predictions CSV, a --classes list that is not the files' classes and a
    localisation CSV without its columns were tracebacks or 'the file is damaged'."""
    empty, preds, loc = tmp_path / "empty.csv", tmp_path / "p.csv", tmp_path / "loc.csv"
    empty.write_text("")
    preds.write_text("fold,cohort,slide_id,patient_id,label,pred,prob_normal,prob_tumour\n")
    loc.write_text("slide_id,store\ns1,s1.zarr\n")
    ev = ["evaluate", "--folds", str(tmp_path / "f.csv"), "--out", str(tmp_path / "e")]
    ens = ["ensemble", "--cohort", "c", "--out", str(tmp_path / "e")]
    cases = [
        ([*ev, "--predictions", str(empty)], "empty.csv: not a prediction CSV (EmptyDataError)"),
        ([*ens, "--predictions", str(empty)], "empty.csv: not a prediction CSV"),
        (
            [*ev, "--predictions", str(preds), "--classes", "normal", "normal"],
            "--classes normal normal: give at least two distinct classes",
        ),
        (
            [*ens, "--predictions", str(preds), "--classes", "normal", "lesion"],
            "p.csv has probabilities of normal, tumour (its prob_<class> columns)",
        ),
        (
            [*ev, "--predictions", str(preds), "--localization", str(loc)],
            "loc.csv: missing column(s) attention, mask",
        ),
        (
            [*ev, "--predictions", str(preds), "--localization", str(tmp_path / "no.csv")],
            "no.csv: localisation CSV not found",
        ),
    ]
    # a model of another class set among the files: both files' classes named (the second
    # file was blamed for "missing column(s) prob_normal, prob_tumour")
    other = tmp_path / "other.csv"
    other.write_text("fold,cohort,slide_id,patient_id,label,pred,prob_benign,prob_malignant\n")
    cases.append(
        (
            [*ens, "--predictions", str(preds), str(other)],
            f"{preds} has normal, tumour, {other} has benign, malignant",
        )
    )
    cases.append(([*ev, "--predictions", str(preds), str(other)], "of models of other classes"))
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (args, err)


def test_log_to_a_folder_and_an_even_median_are_one_line(tmp_path, capsys, cmu_svs):
    assert main(["--log", str(tmp_path), "splits", "--sheet", "s.csv", "--out", "f.csv"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gigamil: error: --log {tmp_path}: ")
    args = ["mask", str(cmu_svs), "--out", str(tmp_path / "m.png"), "--median-px", "4"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "--median-px 4 is even; a median blur needs an odd kernel, so 5 is used" in err


def test_resample_tolerance_range_matches_the_package():
    from gigamil.commands.patches import MAX_RESAMPLE_TOLERANCE
    from gigamil.wsi.patching import MAX_EFFECTIVE_MPP_ERROR

    assert MAX_RESAMPLE_TOLERANCE == MAX_EFFECTIVE_MPP_ERROR


def test_heatmap_cmap_typo_is_named_as_the_option(tmp_path, capsys):
    args = ["heatmap", "--store", str(tmp_path / "s.zarr"), "--attention", "a.npy"]
    assert main([*args, "--out", str(tmp_path / "h"), "--cmap", "jett"]) == 2
    err = capsys.readouterr().err
    assert "--cmap: 'jett' is not a matplotlib colour map; did you mean jet?" in err
    assert "heatmaps.cmap" not in err


def test_zero_is_refused_where_the_minimum_is_exclusive(capsys):
    """µm/px must be > 0: --mpp 0 (and --mask-mpp 0) are refused by argparse, not used."""
    for args, option in (
        ([*PATCHES, "--mpp", "0", "--patch-px", "64"], "--mpp"),
        (["mask", "s.svs", "--out", "m.png", "--mask-mpp", "0"], "--mask-mpp"),
    ):
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(args)
        assert exc.value.code == 2
        assert f"argument {option}: must be > 0, got 0" in capsys.readouterr().err


def test_an_interrupted_command_exits_130_with_one_line(monkeypatch, capsys):
    """Ctrl-C: exit status 130 (as a shell reports SIGINT) and one line, no traceback."""

    def interrupted(args: argparse.Namespace) -> None:
        raise KeyboardInterrupt

    ns = argparse.Namespace(command="patches", _run=interrupted, log=None, verbose=False)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", lambda self, argv=None: ns)
    assert main(["patches"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["gigamil patches: interrupted"]


def test_ensemble_passes_its_bootstrap_options(monkeypatch, tmp_path, capsys):
    """--n-boot and --seed reach the ensemble's bootstrap (they were parsed, then not used)."""
    from gigamil.evaluate import ensemble

    preds = tmp_path / "p.csv"
    preds.write_text("fold,cohort,slide_id,patient_id,label,pred,prob_normal,prob_tumour\n")
    seen = {}
    monkeypatch.setattr(ensemble, "has_labels", lambda paths, cohort=None: True)
    monkeypatch.setattr(ensemble, "ensemble_cohort", lambda *a, **k: seen.update(k) or {})
    args = ["ensemble", "--predictions", str(preds), "--cohort", "c", "--out", str(tmp_path)]
    assert main([*args, "--n-boot", "7", "--seed", "3"]) == 0
    assert seen["n_boot"] == 7 and seen["seed"] == 3


def test_a_reader_that_stopped_reading_is_exit_141_and_no_error(tmp_path):
    """Output into a pipe nobody reads any more (``gigamil ... | head``): no 'error: Broken
    pipe' and no 'Exception ignored' on stderr, and the exit status a shell gives a command
    killed by SIGPIPE (128 + 13), as any pipeline's first command reports it."""
    import os

    script = (
        "import argparse, sys\n"
        "from gigamil.cli import main\n"
        "def run(args):\n"
        "    print('x' * 200_000)  # more than a pipe holds: written inside the command\n"
        "ns = argparse.Namespace(command='model-info', _run=run, log=None, verbose=False)\n"
        "argparse.ArgumentParser.parse_args = lambda self, argv=None: ns\n"
        "sys.exit(main(['model-info']))\n"
    )
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes
    try:
        res = subprocess.run(
            [sys.executable, "-c", script], stdout=write, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(write)
    assert (res.returncode, res.stderr) == (141, "")
