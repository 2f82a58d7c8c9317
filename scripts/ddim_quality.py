"""Rule ddim_quality: the DDIM Table 1 scores with bootstrap errors (logic in diffusion_report.stages.ddim_experiments)."""

from diffusion_report.io import run_rule
from diffusion_report.stages import ddim_experiments


def main(smk):
    names = list(smk.input.keys())
    quality = {int(k[2:]): smk.input[k] for k in names if k.startswith("q_")}
    reused = {}  # S -> [(variant, samples file)]
    for key, variant in smk.params.reused.items():
        reused.setdefault(int(key.split("_")[1]), []).append((variant, smk.input[key]))
    ddim_experiments.ddim_quality(
        quality, reused, out_csv=smk.output.csv, pairs_csv=smk.output.pairs, out_png=smk.output.png,
        variants=list(smk.params.variants), image_size=int(smk.params.image_size), seed=int(smk.params.seed),
        n_boot=int(smk.params.bootstrap),
    )


run_rule(snakemake, main)  # noqa: F821 (snakemake is injected)
