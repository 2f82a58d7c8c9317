"""Rule ddim_train: install the shipped digits DDPM or train it here (logic in diffusion_report.stages.ddim)."""

from pathlib import Path

from diffusion_report.io import run_rule
from diffusion_report.stages import ddim


def main(smk):
    weights = Path(smk.input.sums).parent if "sums" in smk.input.keys() else None  # the shipped folder
    source = ddim.ddim_train(smk.output.model, smk.output.loss_csv, smk.output.loss_png, dict(smk.params.config),
                               checkpoint=smk.params.checkpoint, weights_dir=weights)
    print(f"ddim_train: {source}")


run_rule(snakemake, main)  # noqa: F821 (snakemake is injected)
