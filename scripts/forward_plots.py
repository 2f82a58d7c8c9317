"""Rule forward_plots: MSE at the shown timesteps and the full curve with its expectation."""

from diffusion_report.io import run_rule
from diffusion_report.stages import forward


def main(smk):
    forward.forward_plots(smk.input.csv, smk.params.timesteps, smk.output.shown, smk.output.curve)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
