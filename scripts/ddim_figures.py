"""Rule ddim_figures: grid, PNGs, metrics, timing and convergence plot (logic in diffusion_report.stages.ddim)."""

from pathlib import Path

from diffusion_report.io import run_rule
from diffusion_report.stages import ddim


def main(smk):
    labels = smk.params.labels
    ddim.ddim_figures(
        dict(zip(labels, smk.input.samples)),
        dict(zip(labels, smk.input.timings)),
        grid_png=smk.output.grid,
        convergence_png=smk.output.convergence,
        metrics_csv=smk.output.metrics,
        timing_csv=smk.output.timing,
        png_dir=str(Path(smk.output.pngs[0]).parent),
        seed=smk.params.seed,
        classifier_csv=smk.output.classifier[0] if len(smk.output.classifier) else None,
    )


run_rule(snakemake, main)  # noqa: F821 (snakemake is injected)
