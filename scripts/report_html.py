"""Rule report_html: render every registered artifact into results/report/report.html."""

from pathlib import Path

from diffusion_report.io import run_rule
from diffusion_report.report import render as report


def main(smk):
    flat = {k: v for k, v in smk.input.items() if "__" in k}
    templates = Path(smk.input.base).parent  # <workflow>/report/templates
    report.report_html(flat, smk.params.config, templates, smk.input.css, smk.output.html,
                       repo=templates.parent.parent, bench_dir="benchmarks")


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
