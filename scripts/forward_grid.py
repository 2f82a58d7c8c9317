"""Rule forward_grid: x_t of every image at the shown timesteps."""

from diffusion_report.core.schedules import Schedule
from diffusion_report.io import run_rule
from diffusion_report.stages import forward


def main(smk):
    schedule = Schedule.from_config(smk.params.schedule)
    forward.forward_grid(smk.input.x0, smk.params.timesteps, schedule, smk.params.seed, smk.output.png)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
