"""Rule report_pdf: print the HTML report to PDF with WeasyPrint."""

from diffusion_report import report
from diffusion_report.io import run_rule


def main(smk):
    report.render_pdf(smk.input.html, smk.output.pdf)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
