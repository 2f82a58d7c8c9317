"""Rule theory_checks: numerical checks of each derived identity -> results/theory/checks.csv."""

from diffusion_report.io import run_rule
from diffusion_report import theory


def main(smk):
    theory.write_checks(smk.params.schedule, smk.params.theory, smk.params.seed, smk.output.csv,
                        mse_csv=smk.input.get("mse"), x0_path=smk.input.get("x0"))


run_rule(snakemake, main)  # noqa: F821
