"""Rule report_html: render every registered artifact into results/report/report.html."""

from pathlib import Path

from diffusion_report import report
from diffusion_report.io import run_rule


def main(smk):
    flat = {k: v for k, v in smk.input.items() if "__" in k}
    repo = Path(smk.scriptdir).parent
    report.render_html(flat, smk.config, repo / "report" / "templates", smk.input.css, smk.output.html,
                       repo=repo, bench_dir="benchmarks")


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
