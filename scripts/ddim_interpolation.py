"""Rule ddim_interpolation: slerp between pairs of x_T, decoded with DDIM (logic in diffusion_report.stages.ddim_experiments)."""

from diffusion_report.io import run_rule
from diffusion_report.stages import ddim_experiments


def main(smk):
    ip = smk.params.interpolation
    ddim_experiments.ddim_interpolation(
        smk.params.model, smk.output.png, pairs=int(ip["pairs"]), points=int(ip["points"]), steps=int(ip["steps"]),
        sampling=dict(smk.params.sampling), seed=int(smk.params.seed), device=smk.params.device,
    )


run_rule(snakemake, main)  # noqa: F821 (snakemake is injected)
