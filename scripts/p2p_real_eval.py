"""Rule p2p_real_eval: drawn images inverted (DDIM, null-text) and edited, against the evaluation on generated images."""

from diffusion_report.io import run_rule
from diffusion_report.stages import p2p


def main(smk):
    p2p.p2p_real_eval(smk.input.eval_summary, smk.params.p2p, smk.params.t2i, dict(smk.output), seed=smk.params.seed,
                      device=smk.params.device, model_dir=smk.input.model, reader_path=smk.input.reader)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
