"""What a finished run prints last: the headline figures and the files to open first.

Snakemake ends a run with ``N of N steps (100%) done`` and the path of its log; a user then has to
know where the results are. :func:`run_summary_lines` reads the run's summaries (the
cross-validation's ``summary.json`` and each external or predict cohort's) and names the page to
open for each; the Snakefile's ``onsuccess`` handler prints them.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from gigamil import layout
from gigamil.evaluate.tables import few_patients, localisation_figure, with_ci


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _ci(summary: Mapping[str, Any], key: str) -> str:
    """The value with its CI, as metrics.html writes it ("n/a" when undefined); the value alone
    for fewer than MIN_PATIENTS_FOR_CI patients (:func:`_figures` says why)."""
    return with_ci(summary, key) or "n/a"


def _figures(summary: Mapping[str, Any], auc_key: str) -> str:
    """ "AUC ..., balanced accuracy ..." with their CIs (the balanced accuracy shows a lesion
    slide called normal, which an AUC of 1.0 over two slides hides), and a note instead of the
    CIs for fewer than MIN_PATIENTS_FOR_CI (10) patients."""
    text = f"AUC{_macro(summary)} {_ci(summary, auc_key)}"
    if summary.get("auc_note") and summary.get(auc_key) is None:  # one class: say so
        text += " (one class only)"
    if summary.get("balanced_accuracy") is not None:
        text += f", balanced accuracy {_ci(summary, 'balanced_accuracy')}"
    if few_patients(summary):
        text += f" (no 95% CIs: {_count(summary.get('n_patients'), 'patient')}, too few)"
    return text


def _count(n: Any, what: str) -> str:
    """ "1 slide", "24 slides"."""
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _macro(summary: Mapping[str, Any]) -> str:
    """ " (macro one-vs-rest)" for more than two classes: how that AUC is formed."""
    return " (macro one-vs-rest)" if len(summary.get("classes") or []) > 2 else ""


def _headline(summary: Mapping[str, Any], auc_key: str) -> str:
    """The slide figures, the patient AUC and the localisation AUC of one summary line."""
    return f"{_figures(summary, auc_key)}{_patients(summary)}{_localisation(summary)}"


def _patients(summary: Mapping[str, Any]) -> str:
    """ "; patient AUC ..." (with its CI) where some patient has several slides: the figure a
    patient-level decision is judged by (per_patient_predictions.csv), "" otherwise."""
    n_patients, n_slides = summary.get("n_patients"), summary.get("n_slides")
    if summary.get("patient_auc") is None or not n_patients or not n_slides:
        return ""
    return f"; patient AUC {_ci(summary, 'patient_auc')}" if n_patients < n_slides else ""


def _localisation(summary: Mapping[str, Any]) -> str:
    loc, n = localisation_figure(summary), summary.get("localization_n_slides", "?")
    if not loc:
        note = summary.get("localization_note")
        return f"; localisation AUC n/a ({note})" if note else ""
    score = localisation_figure(summary, "patch_score_localization_auc")
    score = f", of the patch score {score}" if score else ""
    return f"; localisation AUC {loc}{score} ({'1 slide' if n == 1 else f'mean ± sd, {n} slides'})"


def run_summary_lines(  # noqa: PLR0913 - what the workflow knows at the end of a run
    experiment: str,
    cohorts: Mapping[str, Mapping[str, Any]],
    root: str | Path = ".",
    configfiles: Sequence[str | Path] = (),
    snakemake_args: Sequence[str] = (),
    shown_root: str | Path | None = None,
    trained_models: Sequence[str | Path] = (),
    chance_loss: float | None = None,
    warnings: Sequence[str] = (),
    flag_loss: float | None = None,
) -> list[str]:
    """The lines to print after a successful run of ``experiment`` with ``cohorts`` (the config's
    ``cohorts`` section: name -> {role, ...}); summaries not (yet) written are left out, and
    with none at all (e.g. a run of only the tissue masks) the list is empty. ``configfiles``
    (the run's ``--configfile``) and ``snakemake_args`` (e.g. ``-s SNAKEFILE --directory DIR``
    of a run started elsewhere) go into the report command, and the pages to open are named
    under ``shown_root`` when given (e.g. the run's absolute directory: paths that work from any
    directory), else relative to the run's directory. A summary older
    than the newest fold model.pt is marked ``[STALE: ...]`` (a run stopped before evaluating).
    ``trained_models``: the model.pt files of that key (trained elsewhere): named, and dated.
    ``chance_loss``, ``flag_loss``: a fold model whose training loss ended at or above the flag
    is named as not learned (:mod:`gigamil.train.learning`); ``warnings``: repeated at the end.

    Returns, e.g.::

        gigamil: results of experiment demo
          cross-validation, 22 slides of 16 patients: out-of-fold slide AUC 0.900 (95% CI ...),
          balanced accuracy 0.825 (95% CI ...); patient AUC 0.922 (...); localisation AUC ...
            open results/eval/demo/metrics.html
          heatmaps: ...; all results in one page: snakemake --report report.html
    """
    root = Path(root)
    lines: list[str] = []
    newest_model = _newest_model(root, experiment, trained_models)
    cv_path = Path(layout.eval_dir(experiment)) / "summary.json"
    cv = _read(root / cv_path)
    if cv is not None:
        lines += [
            f"  cross-validation, {_count(cv.get('n_slides'), 'slide')} of "
            f"{_count(cv.get('n_patients'), 'patient')}{_unscored(cv)}: out-of-fold slide "
            f"{_headline(cv, 'oof_auc')}{_stale(root / cv_path, newest_model)}",
            f"    open {_shown(shown_root, cv_path.with_name('metrics.html'))}",
            *_subgroups(root, cv_path, newest_model, shown_root),
        ]
    for name, cohort in cohorts.items():
        path = Path(layout.ensemble_dir(experiment, name)) / "summary.json"
        if cohort.get("role") in ("external", "predict"):
            lines += _cohort_lines(name, cohort["role"], root, path, newest_model, shown_root)
    if not lines:
        return []
    lines[:0] = _models_line(trained_models)
    lines += [f"  WARNING: {w}" for w in warnings]
    if chance_loss is not None and not trained_models:  # this project's own fold models
        lines += _learning_lines(root, experiment, (chance_loss, flag_loss), shown_root)
    return [
        f"gigamil: results of experiment {experiment}",
        *lines,
        _closing_line(root, shown_root, snakemake_args, configfiles, experiment),
    ]


def _closing_line(
    root: Path,
    shown_root: str | Path | None,
    snakemake_args: Sequence[str],
    configfiles: Sequence[str | Path],
    experiment: str = "",
) -> str:
    """Where the heatmaps are (when this ``experiment`` drew some: another experiment's in the
    shared results/heatmaps/ are not this run's) and the command of the one-page report."""
    heatmaps = Path(layout.RESULTS) / "heatmaps"  # none drawn (heatmaps.slides: none): not named
    own = root / heatmaps / experiment if experiment else root / heatmaps
    drawn = f"heatmaps: {_shown(shown_root, heatmaps)}/; " if own.is_dir() else ""
    return (
        f"  {drawn}all results in one page: snakemake"
        + "".join(f" {shlex.quote(str(a))}" for a in snakemake_args)
        + f" --report {shlex.quote(_shown(shown_root, Path('report.html')))}"
        + "".join(f" --configfile {shlex.quote(str(f))}" for f in configfiles)
    )


def _learning_lines(
    root: Path,
    experiment: str,
    chance: tuple[float, float | None],
    shown_root: str | Path | None,
) -> list[str]:
    """A WARNING line per fold model of the experiment whose training loss ended near the
    chance level (``chance``: the level and the flag, :mod:`gigamil.train.learning`), each with
    its training curves to open: the folds of the run's folds.csv (a fold folder left from a
    run with more folds is not this cross-validation's), every fold folder without one."""
    from gigamil.train.learning import learning_warnings

    logs = sorted(root.glob(f"{layout.model_dir(experiment, '*')}/train_log.csv"))
    folds = _run_folds(root / layout.folds_csv(experiment))
    out = []
    for path in logs:
        fold = path.parent.name.removeprefix("fold")
        if folds is not None and fold not in folds:
            continue
        for warning in learning_warnings({f"fold{fold}": path}, *chance):
            curves = Path(layout.training_curves(experiment, fold))
            out += [f"  WARNING: {warning}", f"    open {_shown(shown_root, curves)}"]
    return out


def _run_folds(folds_csv: Path) -> set[str] | None:
    """The fold numbers (as text) of a folds.csv, or None when it is missing or unreadable."""
    try:
        return set(pd.read_csv(folds_csv, usecols=["fold"])["fold"].astype(int).astype(str))
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None


def _models_line(trained_models: Sequence[str | Path]) -> list[str]:
    """The line naming the trained_models folder (each model.pt is in a fold folder of it)."""
    if not trained_models:
        return []
    folder = Path(trained_models[0]).parent.parent
    return [
        f"  predicted by {_count(len(trained_models), 'fold model')} of {folder} (trained_models)"
    ]


def _newest_model(root: Path, experiment: str, trained_models: Sequence[str | Path]) -> float:
    """mtime of the newest fold model.pt: of ``trained_models``, else the experiment's own."""
    files = [root / p for p in trained_models] or list(
        root.glob(f"{layout.model_dir(experiment, '*')}/model.pt")
    )
    return max((p.stat().st_mtime for p in files if p.exists()), default=0.0)


def _shown(shown_root: str | Path | None, path: Path) -> str:
    """``path`` (relative to the run's directory) as the summary prints it: under
    ``shown_root`` when given (a run started with -s / --directory), else as it is."""
    return str(Path(shown_root) / path) if shown_root is not None else str(path)


def _cohort_lines(  # noqa: PLR0913 - the parts of one summary line
    name: str,
    role: str,
    root: Path,
    path: Path,
    newest_model: float,
    shown_root: str | Path | None,
) -> list[str]:
    """The two lines of an external or predict cohort's ensemble summary at ``root / path``
    (none while it is not written)."""
    summary = _read(root / path)
    if summary is None:
        return []
    stale = _stale(root / path, newest_model)
    if role == "external":
        overlap = (summary.get("patient_overlap") or {}).get("n_patients")
        seen = f" [{_count(overlap, 'patient')} also in training: optimistic]" if overlap else ""
        return [
            f"  external cohort {name}, {_count(summary.get('n_slides'), 'slide')}"
            f"{_unscored(summary)}: fold-model ensemble slide {_headline(summary, 'auc')}"
            f"{seen}{stale}",
            f"    open {_shown(shown_root, path.with_name('metrics.html'))}",
            *_subgroups(root, path, newest_model, shown_root),
        ]
    return [
        f"  cohort {name} (predict), {_count(summary.get('n_slides'), 'slide')}: "
        f"{_predicted(summary)}{stale}",
        f"    open {_shown(shown_root, path.with_name('predictions.html'))} (the probabilities "
        "mean something only for slides like the training slides)",
    ]


def _subgroups(
    root: Path, summary: Path, newest_model: float, shown_root: str | Path | None
) -> list[str]:
    """The line naming ``subgroups.html`` beside ``summary`` (config key ``subgroups``), when
    written."""
    page = summary.with_name("subgroups.html")
    if not (root / page).is_file():
        return []
    stale = _stale(root / page, newest_model)
    return [f"    open {_shown(shown_root, page)} (metrics per subgroup){stale}"]


def _predicted(summary: Mapping[str, Any]) -> str:
    """A predict cohort's counts per predicted class ("2 normal, 1 lesion") and of slides
    without patches."""
    counts = ", ".join(f"{n} {c}" for c, n in (summary.get("predicted") or {}).items())
    if summary.get("n_unpredicted"):
        counts += f", {summary['n_unpredicted']} without patches (not predicted)"
    return counts


def _unscored(summary: Mapping[str, Any]) -> str:
    """`` (+ 2 without patches, not scored)`` when the summary counts such slides, else ""."""
    n = summary.get("n_unpredicted") or 0
    return f" (+ {n} without patches, not scored)" if n else ""


def _stale(path: Path, newest_model: float) -> str:
    """A warning for a summary written before the newest fold model (mtime ``newest_model``):
    a run that retrained folds but stopped before the evaluation (``--until train_fold``)
    must not print the old figures as if they were the new models'."""
    try:
        old = path.stat().st_mtime < newest_model
    except OSError:
        return ""
    return " [STALE: older than the fold models; run snakemake again to update]" if old else ""
