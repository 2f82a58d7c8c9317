"""Rule p2p_real_edit: invert one given image (DDIM, then null-text inversion) and edit it with prompt-to-prompt."""

from diffusion_report.io import run_rule
from diffusion_report.stages import p2p


def main(smk):
    outputs = {name: getattr(smk.output, name) for name in p2p.REAL_ARTIFACTS}
    image_file = smk.input.image if hasattr(smk.input, "image") else None
    model_dir = smk.input.model if hasattr(smk.input, "model") else None  # none: p2p.model.pretrained
    p2p.p2p_real_edit(smk.params.entry, smk.params.p2p, smk.params.t2i, outputs, seed=smk.params.seed, device=smk.params.device,
                      model_dir=model_dir, image_file=image_file, reader_path=getattr(smk.input, "reader", None))


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
