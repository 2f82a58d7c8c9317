"""Rule t2i_eval: prompt-to-prompt versus the no-control baseline, scored by the attribute reader."""

from diffusion_report.io import run_rule
from diffusion_report.stages import t2i


def main(smk):
    t2i.t2i_eval(smk.input.model, smk.params.t2i, smk.params.seed, dict(smk.output), device=smk.params.device,
                 reader_path=smk.input.reader)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
