"""Rule t2i_reweight: the reweighting sweep: the object's area against the scale on "big"."""

from diffusion_report.io import run_rule
from diffusion_report.stages import t2i


def main(smk):
    t2i.t2i_reweight(smk.input.model, smk.params.t2i, smk.params.seed, dict(smk.output), device=smk.params.device,
                     reader_path=smk.input.reader)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
