"""Rule t2i_reader: the attribute reader's accuracy on held-out generated images."""

from diffusion_report.io import run_rule
from diffusion_report.stages import t2i


def main(smk):
    t2i.t2i_reader(smk.params.t2i, smk.params.seed, smk.output.csv, smk.output.reader)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
