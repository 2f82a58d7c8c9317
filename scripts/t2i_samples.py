"""Rule t2i_samples: sample grid per caption and caption accuracy per guidance scale."""

from diffusion_report.io import run_rule
from diffusion_report.stages import t2i


def main(smk):
    t2i.t2i_samples(smk.input.model, smk.params.t2i, smk.params.seed, dict(smk.output), reader_path=smk.input.reader)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
