"""Rule ddim_reconstruction: DDIM inversion and decoding per step count (logic in diffusion_report.stages.ddim_experiments)."""

from diffusion_report.io import run_rule
from diffusion_report.stages import ddim_experiments


def main(smk):
    rc = smk.params.reconstruction
    ddim_experiments.ddim_reconstruction(
        smk.params.model, smk.output.csv, smk.output.png, step_counts=list(rc["step_counts"]),
        num_images=int(rc["num_images"]), sampling=dict(smk.params.sampling), seed=int(smk.params.seed),
        device=smk.params.device, forward_images=list(smk.params.forward_images),
    )


run_rule(snakemake, main)  # noqa: F821 (snakemake is injected)
