"""Rule theory_render: report/theory.tex -> results/theory/theory.html (math as SVG)."""

from diffusion_report.io import run_rule
from diffusion_report import theory


def main(smk):
    theory.render_theory(smk.input.tex, smk.output.html, bib_path=smk.input.bib)


run_rule(snakemake, main)  # noqa: F821
