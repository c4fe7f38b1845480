"""Snakemake script of rule demo_cohort: build the demo cohort (gigamil.demo_tiles by default,
gigamil.demo for the synthetic kind)."""

from gigamil.logutil import setup_script_logging

setup_script_logging(snakemake.log[0])  # first: setup errors reach the log too

from pathlib import Path

args = dict(
    seed=int(snakemake.params.seed),
    n_patients=int(snakemake.params.patients),
    slides_per_patient=str(snakemake.params.slides_per_patient),  # N or LO-HI
)
if snakemake.params.kind == "synthetic":
    from gigamil.demo import make_demo_cohort

    make_demo_cohort(Path(snakemake.output.sheet).parent, **args)
else:
    from gigamil.demo_tiles import make_tile_cohort

    make_tile_cohort(Path(snakemake.output.sheet).parent, **args)
