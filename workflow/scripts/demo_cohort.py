"""Snakemake script of rule demo_cohort: build the demo cohort with gigamil.demo."""

from pathlib import Path

from gigamil.demo import make_demo_cohort
from gigamil.logutil import setup_logging

setup_logging(snakemake.log[0])
make_demo_cohort(
    Path(snakemake.output.sheet).parent,
    seed=int(snakemake.params.seed),
    n_patients=int(snakemake.params.patients),
    slides_per_patient=int(snakemake.params.slides_per_patient),
)
