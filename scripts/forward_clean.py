"""Rule forward_clean: load, crop and resize the clean images x_0."""

from diffusion_report.io import run_rule
from diffusion_report.stages import forward


def main(smk):
    forward.forward_clean(smk.params.images, smk.params.size, smk.output.tensor, smk.output.png, files=list(smk.input.images))


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
