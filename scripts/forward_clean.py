"""Rule forward_clean: load, crop and resize the clean images x_0."""

from diffusion_report import forward
from diffusion_report.io import run_rule


def main(smk):
    forward.save_clean(smk.params.images, smk.params.size, smk.output.tensor, smk.output.png, files=list(smk.input.images))


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
