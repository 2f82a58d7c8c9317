"""Rule report_pdf: print the HTML report to PDF with WeasyPrint."""

from diffusion_report.io import run_rule
from diffusion_report.report import render as report


def main(smk):
    report.report_pdf(smk.input.html, smk.output.pdf)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
