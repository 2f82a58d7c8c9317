"""Rule t2i_train: train the embedded text-to-image model, or install its shipped weights."""

from pathlib import Path

from diffusion_report.io import run_rule
from diffusion_report.stages import t2i


def main(smk):
    weights = Path(smk.input.sums).parent if "sums" in smk.input.keys() else None  # the shipped folder
    t2i.t2i_train(smk.params.t2i, smk.params.seed, dict(smk.output), device=smk.params.device, weights_dir=weights,
                  checkpoint=smk.params.checkpoint)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
