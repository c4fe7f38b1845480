"""What both demo generators share (gigamil.demo_io): slides per patient, fixed or drawn."""

import re

import pytest

from gigamil.commands import demo as demo_command
from gigamil.demo_io import (
    DEMO_PATIENTS,
    DEMO_SLIDES_PER_PATIENT,
    check_cohort_size,
    slide_counts,
    slides_range,
)
from gigamil.errors import GigamilError


@pytest.mark.parametrize(
    ("value", "expected"),
    [(2, (2, 2)), ("2", (2, 2)), ("1-2", (1, 2)), (" 1-3 ", (1, 3)), ((1, 2), (1, 2))],
)
def test_slides_per_patient_forms(value, expected):
    assert slides_range(value) == expected


@pytest.mark.parametrize(
    "value",
    ["", "1-", "a", "1-2-3", "-1", 1.5, True, None, "²", "１-２", "1 - 2", ("a", "b"), (1, 2.5)],
)
def test_slides_per_patient_bad_forms_are_refused(value):
    """ASCII digits only, as the CLI's type: "²" passed str.isdigit and int() raised
    ValueError (a traceback from benchmarks/real_tissue.py)."""
    with pytest.raises(GigamilError, match="give N or LO-HI"):
        slides_range(value)


def test_cohort_size_checks_the_range():
    check_cohort_size(16, "1-2")
    with pytest.raises(GigamilError, match="runs backwards"):
        check_cohort_size(16, "2-1")
    with pytest.raises(GigamilError, match="must be >= 1"):
        check_cohort_size(16, "0-2")
    with pytest.raises(GigamilError, match="limited to 99 patients x 9"):
        check_cohort_size(16, "1-10")


def test_slide_counts_fixed_or_drawn_per_patient():
    assert slide_counts(0, 5, 2) == [2, 2, 2, 2, 2]
    drawn = slide_counts(0, 40, "1-2")
    assert set(drawn) == {1, 2} and drawn == slide_counts(0, 40, (1, 2))  # deterministic
    assert drawn != slide_counts(1, 40, "1-2")  # the seed draws


def test_cli_defaults_are_the_demo_cohort(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    demo_command.add_arguments(parser)
    args = parser.parse_args(["out"])
    assert args.patients == DEMO_PATIENTS
    assert slides_range(args.slides_per_patient) == DEMO_SLIDES_PER_PATIENT
    for bad in ("one", "²", "１", "1 - 2"):
        with pytest.raises(SystemExit):
            parser.parse_args(["out", "--slides-per-patient", bad])
        assert re.search(r"--slides-per-patient: give N or LO-HI", capsys.readouterr().err)
