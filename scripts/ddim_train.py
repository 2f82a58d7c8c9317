"""Rule ddim_train: install the shipped digits DDPM or train it here (logic in diffusion_report.training)."""

from diffusion_report.io import run_rule
from diffusion_report import training


def main(smk):
    source = training.run_training(smk.output.model, smk.output.loss_csv, smk.output.loss_png, dict(smk.params.config),
                                   checkpoint=smk.params.checkpoint)
    print(f"ddim_train: {source}")


run_rule(snakemake, main)  # noqa: F821 (snakemake is injected)
