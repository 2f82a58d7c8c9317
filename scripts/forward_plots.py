"""Rule forward_plots: MSE at the shown timesteps and the full curve with its expectation."""

from diffusion_report import forward
from diffusion_report.io import run_rule


def main(smk):
    forward.make_mse_plots(smk.input.csv, smk.params.timesteps, smk.output.shown, smk.output.curve)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
