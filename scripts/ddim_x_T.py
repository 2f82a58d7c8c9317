"""Rule ddim_x_T: draw the one x_T every sampler starts from (logic in diffusion_report.stages.ddim)."""

from diffusion_report.io import run_rule
from diffusion_report.stages import ddim


def main(smk):
    p = smk.params
    ddim.ddim_x_T(smk.output[0], p.model, num_samples=p.num_samples, step_counts=p.step_counts, seed=p.seed)


run_rule(snakemake, main)  # noqa: F821 (snakemake is injected)
