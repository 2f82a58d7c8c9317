"""Rule t2i_tradeoff: prompt-to-prompt's trade-off curve over the fraction of injected cross-attention steps."""

from diffusion_report.io import run_rule
from diffusion_report.stages import t2i


def main(smk):
    t2i.t2i_tradeoff(smk.input.model, smk.params.t2i, smk.params.seed, dict(smk.output), device=smk.params.device,
                     reader_path=smk.input.reader)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
