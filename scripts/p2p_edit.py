"""Rule p2p_edit: one prompt-to-prompt edit (source, edited and no-control images, figures, metrics)."""

from diffusion_report.io import run_rule
from diffusion_report.stages import p2p


def main(smk):
    outputs = {name: getattr(smk.output, name) for name in p2p.ARTIFACTS}
    model_dir = smk.input.model if hasattr(smk.input, "model") else None
    p2p.p2p_edit(smk.params.p2p, smk.params.edit, outputs, seed=smk.params.seed, device=smk.params.device, model_dir=model_dir)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
