"""Rule ddim_x_T: draw the one x_T every sampler starts from (logic in diffusion_report.ddim)."""

from diffusion_report.io import run_rule
from diffusion_report import ddim


def main(smk):
    ddim.run_x_T(smk.output[0], smk.config)


run_rule(snakemake, main)  # noqa: F821 (snakemake is injected)
