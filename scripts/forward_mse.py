"""Rule forward_mse: the per-timestep MSE table with its closed-form expectation."""

from diffusion_report.core.schedules import Schedule
from diffusion_report.io import run_rule
from diffusion_report.stages import forward


def main(smk):
    schedule = Schedule.from_config(smk.params.schedule)
    forward.forward_mse(smk.input.x0, smk.params.t_max, schedule, smk.params.seed, smk.output.csv)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
