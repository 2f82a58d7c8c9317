# Exercise 4: DDIM sampling of a DDPM from one fixed x_T (logic: diffusion_report.stages.ddim),
# and the DDIM paper's experiments (diffusion_report.stages.ddim_experiments).
#
#   ddim_train            (source: train) the digits DDPM: shipped sha256-checked weights, or trained here (retrain)
#   ddim_x_T              the one x_T of the comparison          -> results/ddim/x_T.safetensors
#   ddim_sample           DDIM with {steps} steps from x_T       -> results/ddim/samples/ddim_{steps}.safetensors
#   ddim_ddpm_baseline    DDPM ancestral, all T steps, from x_T  -> results/ddim/samples/ddpm.safetensors
#   ddim_figures          grid, PNGs, metrics and timing CSVs, convergence plot
#   ddim_quality_samples  Table 1 cells at {steps} (eta values, sigma-hat) from the same x_T
#   ddim_quality          Frechet distance on the digit reader's features per cell, bootstrap errors
#   ddim_reconstruction   Table 2: encode (DDIM inversion) and decode held-out digits per S
#   ddim_interpolation    Figure 6: slerp between x_T pairs, decoded with DDIM

from diffusion_report.models.files import DDIM_WEIGHT_FILES
from diffusion_report.stages.ddim_cells import (
    quality_variants,
    reused_cells,
    variant_label,
)
from diffusion_report.images import decode_mem_mb

DDIM = config["ddim"]
DDIM_IS_DIGITS = DDIM["model"]["source"] == "train"
# The trained model folder when ddim.model.source is train; nothing for a pretrained model.
DDIM_MODEL_INPUT = ["results/ddim/model"] if DDIM_IS_DIGITS else []
DDIM_LABELS = [f"ddim_{int(s)}" for s in DDIM["step_counts"]] + (
    ["ddpm"] if DDIM["ddpm_baseline"] else []
)
# The config each rule depends on, declared as params so that changing it reruns the rule
# (the scripts read them from params).
DDIM_SAMPLING_CONFIG = {
    "ddim": {
        k: v
        for k, v in DDIM.items()
        if k
        not in (
            "step_counts",
            "ddpm_baseline",
            "enabled",
            "quality",
            "reconstruction",
            "interpolation",
        )
    },
    "schedule": config["schedule"],
    "seed": config["seed"],
}
DDIM_SAMPLING = {
    "eta": DDIM["eta"],
    "skip_type": DDIM["skip_type"],
    "clip_sample": DDIM["clip_sample"],
    "precision": DDIM["precision"],
}
DDIM_QUALITY = DDIM["quality"]
DDIM_QUALITY_ON = DDIM["enabled"] and DDIM_IS_DIGITS and DDIM_QUALITY["enabled"]


rule ddim_train:
    input:
        unpack(get_ddim_train_input),
    output:
        model=directory("results/ddim/model"),
        loss_csv="results/ddim/train_loss.csv",
        loss_png="results/ddim/train_loss.png",
    log:
        "logs/ddim_train/ddim_train.log",
    benchmark:
        "benchmarks/ddim_train/ddim_train.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=120 if DDIM["retrain"] else 5,
    params:
        config={
            "ddim": {k: DDIM[k] for k in ("train", "retrain", "weights")},
            "schedule": config["schedule"],
            "seed": config["seed"],
        },
        checkpoint="results/ddim/.train_checkpoint.pt",
    script:
        "../scripts/ddim_train.py"


rule ddim_x_T:
    input:
        model=DDIM_MODEL_INPUT,
    output:
        "results/ddim/x_T.safetensors",
    log:
        "logs/ddim_x_T/ddim_x_T.log",
    benchmark:
        "benchmarks/ddim_x_T/ddim_x_T.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        model=get_ddim_model,
        num_samples=DDIM["num_samples"],
        step_counts=DDIM["step_counts"],
        seed=config["seed"],
    script:
        "../scripts/ddim_x_T.py"


rule ddim_sample:
    input:
        model=DDIM_MODEL_INPUT,
        x_T="results/ddim/x_T.safetensors",
    output:
        samples="results/ddim/samples/ddim_{steps}.safetensors",
        timing="results/ddim/timing/ddim_{steps}.json",
    log:
        "logs/ddim_sample/{steps}.log",
    benchmark:
        "benchmarks/ddim_sample/{steps}.tsv"
    wildcard_constraints:
        steps=r"\d+",
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=60,
    params:
        model=get_ddim_model,
        sampling=DDIM_SAMPLING_CONFIG,
        device=config["device"],
    script:
        "../scripts/ddim_sample.py"


rule ddim_ddpm_baseline:
    input:
        model=DDIM_MODEL_INPUT,
        x_T="results/ddim/x_T.safetensors",
    output:
        samples="results/ddim/samples/ddpm.safetensors",
        timing="results/ddim/timing/ddpm.json",
    log:
        "logs/ddim_ddpm_baseline/ddim_ddpm_baseline.log",
    benchmark:
        "benchmarks/ddim_ddpm_baseline/ddim_ddpm_baseline.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=60,
    params:
        model=get_ddim_model,
        sampling=DDIM_SAMPLING_CONFIG,
        device=config["device"],
    script:
        "../scripts/ddim_sample.py"


rule ddim_figures:
    input:
        samples=expand("results/ddim/samples/{label}.safetensors", label=DDIM_LABELS),
        timings=expand("results/ddim/timing/{label}.json", label=DDIM_LABELS),
    output:
        grid=report(
            "results/ddim/grid.png",
            caption="../report/captions/ddim.rst",
            category="DDIM",
            labels={"figure": "samples per step count"},
        ),
        convergence="results/ddim/convergence.png",
        metrics="results/ddim/metrics.csv",
        timing="results/ddim/timing.csv",
        pngs=expand(
            "results/ddim/png/{label}_{i:02d}.png",
            label=DDIM_LABELS,
            i=range(int(config["ddim"]["num_samples"])),
        ),
        classifier=(["results/ddim/classifier.csv"] if DDIM_IS_DIGITS else []),
    log:
        "logs/ddim_figures/ddim_figures.log",
    benchmark:
        "benchmarks/ddim_figures/ddim_figures.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        labels=DDIM_LABELS,
        sampling=DDIM_SAMPLING_CONFIG,
        seed=config["seed"],
    script:
        "../scripts/ddim_figures.py"


rule ddim_quality_samples:
    input:
        model=DDIM_MODEL_INPUT,
        x_T="results/ddim/x_T.safetensors",
    output:
        "results/ddim/quality/samples_{steps}.safetensors",
    log:
        "logs/ddim_quality_samples/{steps}.log",
    benchmark:
        "benchmarks/ddim_quality_samples/{steps}.tsv"
    wildcard_constraints:
        steps=r"\d+",
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=60,
    params:
        model=get_ddim_model,
        variants=lambda wildcards: get_quality_variants(wildcards.steps),
        sampling=DDIM_SAMPLING,
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/ddim_quality_samples.py"


rule ddim_quality:
    input:
        unpack(get_quality_inputs),
    output:
        csv="results/ddim/quality.csv",
        pairs="results/ddim/quality_pairs.csv",
        png=report(
            "results/ddim/quality.png",
            caption="../report/captions/ddim_quality.rst",
            category="DDIM",
            labels={"figure": "quality vs steps and eta"},
        ),
    log:
        "logs/ddim_quality/ddim_quality.log",
    benchmark:
        "benchmarks/ddim_quality/ddim_quality.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        variants=quality_variants(DDIM_QUALITY["etas"], DDIM_QUALITY["sigma_hat"]),
        reused=get_reused_variants(),
        image_size=DDIM["train"]["image_size"],
        seed=config["seed"],
        bootstrap=DDIM_QUALITY["bootstrap"],
    script:
        "../scripts/ddim_quality.py"


rule ddim_reconstruction:
    input:
        model=DDIM_MODEL_INPUT,
    output:
        csv="results/ddim/reconstruction.csv",
        png="results/ddim/reconstruction.png",
    log:
        "logs/ddim_reconstruction/ddim_reconstruction.log",
    benchmark:
        "benchmarks/ddim_reconstruction/ddim_reconstruction.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        # a pretrained model encodes the forward stage's images, decoded here at full size first
        mem_mb=lambda wildcards: 3000
        + (
            0
            if DDIM_IS_DIGITS
            else decode_mem_mb(
                config["forward"]["images"][: DDIM["reconstruction"]["num_images"]]
            )
        ),
        runtime=60,
    params:
        model=get_ddim_model,
        reconstruction=DDIM["reconstruction"],
        sampling=DDIM_SAMPLING,
        forward_images=config["forward"]["images"],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/ddim_reconstruction.py"


rule ddim_interpolation:
    input:
        model=DDIM_MODEL_INPUT,
    output:
        png="results/ddim/interpolation.png",
    log:
        "logs/ddim_interpolation/ddim_interpolation.log",
    benchmark:
        "benchmarks/ddim_interpolation/ddim_interpolation.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        model=get_ddim_model,
        interpolation=DDIM["interpolation"],
        sampling=DDIM_SAMPLING,
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/ddim_interpolation.py"


if config["ddim"]["enabled"]:
    REPORT_INPUTS["ddim"] = {
        "grid": "results/ddim/grid.png",
        "convergence": "results/ddim/convergence.png",
        "metrics": "results/ddim/metrics.csv",
        "timing": "results/ddim/timing.csv",
    }
    if DDIM_IS_DIGITS:
        REPORT_INPUTS["ddim"].update(
            {
                "classifier": "results/ddim/classifier.csv",
                "loss_plot": "results/ddim/train_loss.png",
                "loss_csv": "results/ddim/train_loss.csv",
            }
        )
    if DDIM_QUALITY_ON:
        REPORT_INPUTS["ddim"].update(
            {
                "quality_csv": "results/ddim/quality.csv",
                "quality_pairs": "results/ddim/quality_pairs.csv",
                "quality_png": "results/ddim/quality.png",
            }
        )
    if DDIM["reconstruction"]["enabled"]:
        REPORT_INPUTS["ddim"].update(
            {
                "recon_csv": "results/ddim/reconstruction.csv",
                "recon_png": "results/ddim/reconstruction.png",
            }
        )
    if DDIM["interpolation"]["enabled"]:
        REPORT_INPUTS["ddim"]["interp_png"] = "results/ddim/interpolation.png"
