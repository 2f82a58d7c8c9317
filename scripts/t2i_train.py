"""Rule t2i_train: train the embedded text-to-image model, or install its shipped weights."""

from diffusion_report import t2i
from diffusion_report.io import run_rule


def main(smk):
    t2i.train_rule(smk.params.t2i, smk.params.seed, dict(smk.output), device=smk.params.device)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
