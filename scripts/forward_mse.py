"""Rule forward_mse: the per-timestep MSE table with its closed-form expectation."""

from diffusion_report import forward
from diffusion_report.io import run_rule
from diffusion_report.schedules import Schedule


def main(smk):
    schedule = Schedule.from_config(smk.params.schedule)
    forward.write_mse_table(smk.input.x0, smk.params.t_max, schedule, smk.params.seed, smk.output.csv)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
