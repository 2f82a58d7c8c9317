"""Rule t2i_reader: the attribute reader's accuracy on held-out generated images."""

from diffusion_report import evaluate
from diffusion_report.io import run_rule


def main(smk):
    evaluate.reader_rule(smk.params.t2i, smk.params.seed, smk.output.csv)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
