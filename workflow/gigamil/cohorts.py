"""The cohorts of a configuration together: loading every sheet, and the checks across them
(classes seen in training, slide identity and patient leakage between cohorts).

Every problem raises :class:`~gigamil.errors.ConfigError` naming the cohorts and ids, before any
job runs.
"""

from __future__ import annotations

import hashlib
import logging
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from stat import S_ISREG
from typing import Any

import pandas as pd

from gigamil.config import ROLE_PREDICT
from gigamil.errors import ConfigError
from gigamil.sheet_csv import raise_problems
from gigamil.sheets import load_sheet, sheet_line, sheet_slide_path

log = logging.getLogger(__name__)


def load_cohorts(
    config: Mapping[str, Any], base_dir: str | Path = ".", check_content: bool = True
) -> dict[str, pd.DataFrame]:
    """Load every cohort sheet of a validated config, keyed by cohort name, and run
    :func:`check_leakage` (``check_content`` False skips its same-content comparison, which reads
    2 MiB of every slide: the workflow's job processes leave it to the main process)."""
    sheets: dict[str, pd.DataFrame] = {}
    read: dict[str, pd.DataFrame] = {}  # every sheet that could be read, valid or not
    problems: list[str] = []  # every cohort's sheet problems in one error, not one per run
    for name, cohort in config["cohorts"].items():
        try:
            sheets[name] = load_sheet(
                Path(base_dir) / cohort["sheet"]
                if not Path(cohort["sheet"]).is_absolute()
                else cohort["sheet"],
                cohort=name,
                classes=list(config["classes"]),
                cohort_mpp=cohort.get("mpp"),
                check_files=not cohort.get("demo", False),
                base_dir=base_dir,
                labels_required=cohort.get("role", "train") != ROLE_PREDICT,
                loaded=read,
            )
        except ConfigError as exc:  # each problem names its cohort (two may share a sheet)
            text = str(exc)
            problems.append(text if text.startswith("cohort ") else f"cohort {name!r}: {text}")
    try:  # across every sheet that could be read: reported with the sheets' own problems
        check_leakage(config, read, base_dir, check_content=check_content)
    except ConfigError as exc:
        problems.append(str(exc))
    raise_problems(None, problems, "problems in the cohort sheets")
    check_classes_trained(config, sheets)
    return sheets


def check_demo_cohorts(
    config: Mapping[str, Any], sheets: Mapping[str, pd.DataFrame], demo_slide_ids: Iterable[str]
) -> None:
    """ConfigError for a cohort with ``demo: true`` whose sheet lists slides the built-in demo
    does not make (``demo_slide_ids``: those of resources/demo/sheet.csv, which rule demo_cohort
    writes): the key, copied from the demo's config onto a cohort of one's own slides, makes
    the workflow expect generated slides and the demo's lesion masks for them."""
    made = set(map(str, demo_slide_ids))
    for name, cohort in config["cohorts"].items():
        other = (
            sorted(set(sheets[name]["slide_id"].astype(str)) - made) if cohort.get("demo") else []
        )
        if other:
            raise ConfigError(
                f"cohorts.{name}.demo: true is for the built-in demo cohort (sheet "
                f"resources/demo/sheet.csv), whose slides rule demo_cohort generates; cohort "
                f"{name}'s sheet lists other slides ({', '.join(other[:3])}"
                + (", ..." if len(other) > 3 else "")
                + f"): remove demo: true from cohort {name}"
            )


def check_classes_trained(config: Mapping[str, Any], sheets: Mapping[str, pd.DataFrame]) -> None:
    """ConfigError if a class of ``classes`` has no slide in the train cohorts: the models would
    get an output for a class they never see (and, with three outputs instead of two, no logit
    calibration). Without train cohorts (only predicting) there is nothing to check."""
    train = [n for n in sheets if config["cohorts"][n].get("role", "train") == "train"]
    if not train:
        return
    seen = {str(v) for n in train for v in sheets[n]["label"]}
    absent = [str(c) for c in config["classes"] if str(c) not in seen]
    if absent:
        raise ConfigError(
            f"classes: {', '.join(map(repr, absent))} has no slide in the train cohort(s) "
            f"{', '.join(train)} (their labels: {', '.join(sorted(seen))}); remove it from "
            "classes or add slides with that label"
        )


def _first(ids: pd.Series | set[str], n: int = 3) -> str:
    return ", ".join(sorted(map(str, ids))[:n])


FINGERPRINT_BYTES = 1 << 20


def slide_fingerprint(path: Path) -> tuple[int, str] | None:
    """``(size in bytes, sha256 of the first and last MiB)`` of a file; None if it is missing
    (e.g. generated later, like the demo cohort) or empty.

    Two slide files with the same fingerprint are taken to be copies of one slide. Hashing whole
    gigapixel files (GBs each) at every workflow start would take minutes; a copy, a hard link or
    a re-download has the same size and the same head and tail (where TIFF headers and tile
    offsets live), while two different scans practically never do.
    """
    try:
        size = path.stat().st_size
        if size == 0:  # not a slide (the reader says so); nothing to compare
            return None
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            digest.update(fh.read(FINGERPRINT_BYTES))
            if size > FINGERPRINT_BYTES:
                fh.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
                digest.update(fh.read(FINGERPRINT_BYTES))
    except OSError:  # generated later (demo cohorts), or not a file: the sheet check says so
        return None
    return size, digest.hexdigest()


def _file_size(path: str) -> int | None:
    """The byte size of a regular, non-empty file (empty: not a slide, the reader says so; a
    folder: the sheet check says so); None otherwise."""
    try:
        stat = Path(path).stat()
    except OSError:  # generated later (demo cohorts); checked when it exists
        return None
    return stat.st_size if S_ISREG(stat.st_mode) and stat.st_size else None


def _check_same_content(allr: pd.DataFrame) -> None:
    """ConfigError if two rows (of one cohort or of two) hold files with the same
    :func:`slide_fingerprint`. Only files whose byte size another file shares are read: files
    of different sizes differ, so a cohort of distinct scans costs one ``stat`` per slide."""
    sizes = pd.Series([_file_size(p) for p in allr["_path"]], index=allr.index, dtype=object)
    same_size = sizes.notna() & sizes.duplicated(keep=False)
    candidates = allr[same_size]
    prints = pd.Series(
        [slide_fingerprint(Path(p)) for p in candidates["_path"]], index=candidates.index
    )
    known, found = prints.notna(), []
    for _, rows in candidates[known].groupby(prints[known].astype(str)):
        group = rows.drop_duplicates("_path")  # one file in two rows: reported by path
        if len(group) < 2:
            continue
        pairs = [
            f"{c}/{s} ({Path(p).name})"
            for c, s, p in group[["_cohort", "slide_id", "_path"]].itertuples(index=False)
        ]
        where = (
            "in different cohorts: copies of one slide; a slide may belong to one cohort only"
            if group["_cohort"].nunique() > 1
            else "in one cohort: copies of one slide, which would be trained on and tested as two; "
            "list each slide once"
        )
        found.append(
            f"slides {', '.join(pairs[:3])} have the same content (size, first/last MiB) {where}"
        )
    if found:  # every group, not the first only (two copied cohorts: every pair)
        more = f"; and {len(found) - 5} more such group(s)" if len(found) > 5 else ""
        raise ConfigError("; ".join(found[:5]) + more)


def train_patient_overlap(
    config: Mapping[str, Any], sheets: Mapping[str, pd.DataFrame], cohort: str
) -> list[str]:
    """Sorted patient ids of ``cohort`` that are also in a train cohort (empty for a train
    cohort itself; an empty id, which the sheet check refuses, is no patient).
    :func:`check_leakage` lets such patients into an external cohort only with
    ``allow_patient_overlap``; the ensemble's summary records them."""
    if config["cohorts"][cohort].get("role", "train") == "train":
        return []
    train = {
        str(p)
        for name, df in sheets.items()
        if config["cohorts"][name].get("role", "train") == "train"
        for p in df["patient_id"]
    }
    return sorted((train & set(map(str, sheets[cohort]["patient_id"]))) - {""})


def check_leakage(
    config: Mapping[str, Any],
    sheets: Mapping[str, pd.DataFrame],
    base_dir: str | Path = ".",
    check_content: bool = True,
) -> None:
    """Identity and leakage across cohorts, before any job runs; one ConfigError naming the ids
    of every kind found:

    - a slide_id in two cohorts (per-slide results are keyed by slide_id, so ids must be unique
      across cohorts), or two slide_ids that differ only in case (one file on macOS);
    - the same slide file in two rows, of two cohorts or of one: the same resolved path, or the
      same content (same :func:`slide_fingerprint`: a copy of a slide under another name or
      directory; skipped with ``check_content`` False);
    - a patient with different labels in different cohorts (empty labels of a predict cohort
      are no labels);
    - a patient of a train cohort in an external cohort, unless that cohort sets
      ``allow_patient_overlap: true`` (then a warning is logged). In a ``predict`` cohort such a
      patient is only a warning: no metrics are computed there, but the fold models have seen
      the patient's other slides.
    """
    rows = []
    for name, df in sheets.items():
        paths = [str(sheet_slide_path(p, base_dir).resolve()) for p in df["path"].astype(str)]
        lines = [sheet_line(df, i) for i in range(len(df))]
        sheet = config["cohorts"].get(name, {}).get("sheet", "?")
        rows.append(
            df.assign(_cohort=name, _path=paths, _where=[f"{sheet} line {n}" for n in lines])
        )
    if not rows:
        return
    allr = pd.concat(rows, ignore_index=True)
    checks = [_check_one_cohort_per_slide, _check_case_clashes, _check_file_listed_once]
    checks += [_check_same_content] if check_content else []
    checks += [_check_one_label_per_patient, lambda _: _check_train_patients(config, sheets)]
    scored = [c for c, v in config["cohorts"].items() if v.get("role") in ("train", "external")]
    checks += [lambda a: check_patient_spellings(a[a["_cohort"].isin(scored)])]
    _warn_patient_spellings(allr, allr["_cohort"].isin(scored))
    found = []  # every kind of problem in one error, not one per run
    for check in checks:
        try:
            check(allr)
        except ConfigError as exc:
            found.append(str(exc))
    raise_problems(None, found, "problems across cohorts")


def _check_one_cohort_per_slide(allr: pd.DataFrame) -> None:
    """ConfigError if a slide_id or a resolved slide file (``_path``) is in two cohorts."""
    for col, what in (("slide_id", "slide_id"), ("_path", "slide file")):
        per = allr.groupby(col)["_cohort"].nunique()
        dup = per[per > 1].index
        if len(dup):
            rows = allr.loc[allr[col] == dup[0]].drop_duplicates("_cohort").sort_values("_cohort")
            hint = ": give each cohort's ids their own prefix" if col == "slide_id" else ""
            raise ConfigError(
                f"{what} {dup[0]!r} is in cohorts {', '.join(rows['_cohort'])} "
                f"({'; '.join(rows['_where'])}; {len(dup)} such: {_first(dup)}); a slide may "
                f"belong to one cohort only{hint}"
            )


def _spelling_clashes(ids: pd.Series, spaces: bool = False) -> pd.Series:
    """The sets of distinct ``ids`` that are equal up to case and Unicode form (``é`` as one
    character, NFC, or as ``e`` and a combining accent, NFD, as macOS file names have it: they
    print alike) and, with ``spaces``, white space; one entry per such set."""
    key = ids.map(lambda i: unicodedata.normalize("NFC", i)).str.casefold()
    spellings = ids.groupby(key.str.replace(r"\s+", "", regex=True) if spaces else key).unique()
    return spellings[spellings.map(len) > 1]


def _check_case_clashes(allr: pd.DataFrame) -> None:
    """ConfigError if two slide_ids (of any cohorts) differ only in case."""
    ids = allr["slide_id"].astype(str)
    clash = _spelling_clashes(ids)
    if len(clash):
        names = sorted(clash.iloc[0])
        where = sorted(allr.loc[ids.isin(names), "_cohort"].unique())
        raise ConfigError(
            f"slide_ids {_spellings(names)} (cohort {', '.join(where)}) differ only in "
            f"case or Unicode form ({len(clash)} such): on a case-insensitive file system (macOS, Windows) their "
            "result files, e.g. results/patches/<cohort>/<slide_id>.zarr, would be one file; "
            "rename one"
        )


def _check_file_listed_once(allr: pd.DataFrame) -> None:
    """ConfigError if one resolved slide file is in two rows of one cohort (across cohorts:
    :func:`_check_one_cohort_per_slide`)."""
    twice = allr[allr.duplicated(["_cohort", "_path"], keep=False)]
    if not twice.empty:
        first = twice[twice["_path"] == twice["_path"].iloc[0]]
        raise ConfigError(
            f"cohort {first['_cohort'].iloc[0]}: slide file {first['path'].iloc[0]!r} is listed "
            f"{len(first)} times (slide_ids {', '.join(map(str, first['slide_id']))}); one slide "
            "may have one row only (in a train cohort a slide in two folds would be trained on "
            "and tested; elsewhere it would be counted twice)"
        )


def _clash_text(clash: pd.Series) -> str:
    """The first three sets of :func:`_spelling_clashes`, each as its sorted spellings."""
    return "; ".join(_spellings(c) for c in clash.iloc[:3])


def _spellings(ids: Iterable[str]) -> str:
    """``ids`` sorted, quoted; with escapes (``'Jos\\xe9'``, ``'Jose\\u0301'``) when two differ
    only in Unicode form, as they would print alike."""
    ids = sorted(ids)
    forms = {unicodedata.normalize("NFC", i) for i in ids}
    return ", ".join(map(ascii if len(forms) < len(ids) else repr, ids))


def check_patient_spellings(scored: pd.DataFrame) -> None:
    """ConfigError for patient_ids of the train and external cohorts (``scored``) that differ
    only in case, spaces or Unicode form (``P1``, ``p1``): as two patients, one person's slides could be
    trained on and tested in one fold, or be in training and in the external metrics."""
    clash = _spelling_clashes(scored["patient_id"].astype(str), spaces=True)
    if len(clash):
        raise ConfigError(
            f"{len(clash)} patient_id(s) of the train and external cohorts differ from another "
            f"only in case, spaces or Unicode form ({_clash_text(clash)}): as two patients, one person could "
            "be in training and in the test slides; if they are one person, spell them alike, "
            "else give them clearly different ids"
        )


def _warn_patient_spellings(allr: pd.DataFrame, scored: pd.Series) -> None:
    """A warning for patient_ids that differ only in case or spaces (``P1``, ``p1``) where a
    predict cohort is involved: two patients to gigamil, likely one person. Sets whose every
    spelling is in the ``scored`` rows (train and external cohorts) are left to the error of
    :func:`check_patient_spellings`, not also warned of."""
    ids = allr["patient_id"].astype(str)
    refused = set().union(*_spelling_clashes(ids[scored], spaces=True))
    clash = _spelling_clashes(ids, spaces=True)
    clash = clash[[not set(c) <= refused for c in clash]]
    if len(clash):
        log.warning(
            "%d patient_id(s) differ from another only in case, spaces or Unicode form (%s): "
            "they are "
            "different patients to gigamil (folds, patient overlap); if they are one, spell "
            "them alike",
            len(clash),
            _clash_text(clash),
        )


def _check_one_label_per_patient(allr: pd.DataFrame) -> None:
    """ConfigError if a patient has different (non-empty) labels in different cohorts (within
    one sheet, its own check names them)."""
    known = allr["label"].astype(str).ne("") & allr["patient_id"].astype(str).ne("")
    labelled = allr[known].groupby("patient_id")  # an empty id: no patient (its sheet says so)
    labels, cohorts = labelled["label"].nunique(), labelled["_cohort"].nunique()
    mixed = labels[(labels > 1) & (cohorts > 1)].index
    if len(mixed):
        found = sorted(allr.loc[allr["patient_id"] == mixed[0], "label"].astype(str).unique())
        raise ConfigError(
            f"patient {mixed[0]!r} has labels {found} in different cohorts ({len(mixed)} such: "
            f"{_first(mixed)}); a patient has one label"
        )


def _check_train_patients(config: Mapping[str, Any], sheets: Mapping[str, pd.DataFrame]) -> None:
    """Train patients in another cohort: a warning in a predict cohort or with
    ``allow_patient_overlap``, else ConfigError."""
    roles = {name: config["cohorts"][name].get("role", "train") for name in sheets}
    for name in sheets:
        shared = train_patient_overlap(config, sheets, name)  # empty for a train cohort
        if not shared:
            continue
        if roles[name] == ROLE_PREDICT:
            log.warning(
                "cohort %s: %d patient(s) also in a train cohort (%s): the fold models have seen "
                "their other slides (a predict cohort gets no metrics)",
                name,
                len(shared),
                _first(shared),
            )
            continue
        msg = (
            f"cohort {name}: {len(shared)} patient(s) also in a train cohort ({_first(shared)}): "
            "the fold models have seen them, so its external metrics would be optimistic"
        )
        if config["cohorts"][name].get("allow_patient_overlap", False):
            log.warning("%s (allowed by cohorts.%s.allow_patient_overlap)", msg, name)
        else:
            raise ConfigError(
                f"{msg}; remove them, or set cohorts.{name}.allow_patient_overlap: true"
            )
