"""Rule theory_render: report/theory.tex -> results/theory/theory.html (math as SVG) and references.html."""

from diffusion_report.io import run_rule
from diffusion_report.report import latex


def main(smk):
    latex.theory_render(smk.input.tex, smk.output.html, bib_path=smk.input.bib, out_refs=smk.output.refs)


run_rule(snakemake, main)  # noqa: F821
