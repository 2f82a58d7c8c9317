"""Rules ddim_sample and ddim_ddpm_baseline: sample from the saved x_T (logic in diffusion_report.stages.ddim)."""

from diffusion_report.io import run_rule
from diffusion_report.stages import ddim


def main(smk):
    steps = smk.wildcards.get("steps")
    ddim.ddim_sample(
        smk.input.x_T,
        smk.output.samples,
        smk.output.timing,
        smk.params.model,
        dict(smk.params.sampling["ddim"]),
        seed=smk.params.sampling["seed"],
        device=smk.params.device,
        sampler="ddim" if steps is not None else "ddpm",
        num_steps=int(steps) if steps is not None else None,
    )


run_rule(snakemake, main)  # noqa: F821 (snakemake is injected)
