"""Rule theory_checks: numerical checks of each derived identity -> results/theory/checks.csv."""

from diffusion_report.io import run_rule
from diffusion_report.stages import theory


def main(smk):
    theory.theory_checks(smk.params.schedule, smk.params.theory, smk.params.seed, smk.output.csv,
                        mse_csv=smk.input.get("mse"), x0_path=smk.input.get("x0"), out_json=smk.output.params)


run_rule(snakemake, main)  # noqa: F821
