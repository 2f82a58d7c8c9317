"""Rule p2p_metrics: the per-edit metrics in one CSV, in config order."""

from diffusion_report.io import run_rule
from diffusion_report.stages import p2p


def main(smk):
    p2p.p2p_metrics(list(smk.input.metrics), smk.output.csv)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
