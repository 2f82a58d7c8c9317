"""Rule t2i_showcase: the attribute reader's verdict on each showcased prompt-to-prompt edit."""

from diffusion_report.io import run_rule
from diffusion_report.stages import t2i


def main(smk):
    edits = smk.params.edits
    paths = iter(smk.input.images)  # per edit: source, edit, baseline (the rule's expand order)
    images = {e["name"]: {k: next(paths) for k in ("source", "edit", "baseline")} for e in edits}
    t2i.t2i_showcase(edits, images, smk.input.eval_summary, smk.params.t2i, smk.params.seed, smk.output.csv, p2p_cfg=smk.params.p2p,
                     reader_path=smk.input.reader)


run_rule(snakemake, main)  # noqa: F821 - injected by Snakemake
