"""Rule ddim_train: train the small digits DDPM (logic in diffusion_report.training)."""

from diffusion_report.io import run_rule
from diffusion_report import training


def main(smk):
    training.run_training(smk.output.model, smk.output.loss_csv, smk.output.loss_png, smk.config)


run_rule(snakemake, main)  # noqa: F821 (snakemake is injected)
