"""Rule ddim_quality_samples: the DDIM Table 1 variants at one step count (logic in diffusion_report.stages.ddim_experiments)."""

from diffusion_report.io import run_rule
from diffusion_report.stages import ddim_experiments


def main(smk):
    ddim_experiments.ddim_quality_samples(
        smk.params.model, smk.input.x_T, smk.output[0], steps=int(smk.wildcards.steps), variants=list(smk.params.variants),
        sampling=dict(smk.params.sampling), seed=int(smk.params.seed), device=smk.params.device,
    )


run_rule(snakemake, main)  # noqa: F821 (snakemake is injected)
