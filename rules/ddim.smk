# Exercise 4: DDIM sampling of a DDPM from one fixed x_T (see scripts/diffusion_report/ddim.py).
#
#   ddim_train          (source: train) small DDPM on scikit-learn digits -> results/ddim/model/
#   ddim_x_T            the one x_T of the comparison          -> results/ddim/x_T.safetensors
#   ddim_sample         DDIM with {steps} steps from x_T       -> results/ddim/samples/ddim_{steps}.safetensors
#   ddim_ddpm_baseline  DDPM ancestral, all T steps, from x_T  -> results/ddim/samples/ddpm.safetensors
#   ddim_figures        grid, PNGs, metrics and timing CSVs, convergence plot


# The trained model folder when ddim.model.source is train; nothing for a pretrained model.
DDIM_MODEL_INPUT = ["results/ddim/model"] if config["ddim"]["model"]["source"] == "train" else []
DDIM_LABELS = [f"ddim_{int(s)}" for s in config["ddim"]["step_counts"]] + (
    ["ddpm"] if config["ddim"]["ddpm_baseline"] else []
)
DDIM_IS_DIGITS = config["ddim"]["model"]["source"] == "train"
# The config each rule depends on, declared as params so that changing it reruns the rule
# (the scripts read the same values from the config).
DDIM_SAMPLING_CONFIG = {
    "ddim": {k: v for k, v in config["ddim"].items() if k not in ("step_counts", "ddpm_baseline", "enabled")},
    "schedule": config["schedule"],
    "seed": config["seed"],
}


rule ddim_train:
    output:
        model=directory("results/ddim/model"),
        loss_csv="results/ddim/train_loss.csv",
        loss_png="results/ddim/train_loss.png",
    params:
        train=config["ddim"]["train"],
        schedule=config["schedule"],
        seed=config["seed"],
    log:
        "logs/ddim_train/ddim_train.log",
    benchmark:
        "benchmarks/ddim_train/ddim_train.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=30,
    script:
        "../scripts/ddim_train.py"


rule ddim_x_T:
    input:
        model=DDIM_MODEL_INPUT,
    output:
        "results/ddim/x_T.safetensors",
    params:
        model=config["ddim"]["model"],
        num_samples=config["ddim"]["num_samples"],
        image_size=config["ddim"]["train"]["image_size"],
        seed=config["seed"],
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
    script:
        "../scripts/ddim_x_T.py"


rule ddim_sample:
    input:
        model=DDIM_MODEL_INPUT,
        x_T="results/ddim/x_T.safetensors",
    output:
        samples="results/ddim/samples/ddim_{steps}.safetensors",
        timing="results/ddim/timing/ddim_{steps}.json",
    params:
        sampling=DDIM_SAMPLING_CONFIG,
    wildcard_constraints:
        steps=r"\d+",
    log:
        "logs/ddim_sample/{steps}.log",
    benchmark:
        "benchmarks/ddim_sample/{steps}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=60,
    script:
        "../scripts/ddim_sample.py"


rule ddim_ddpm_baseline:
    input:
        model=DDIM_MODEL_INPUT,
        x_T="results/ddim/x_T.safetensors",
    output:
        samples="results/ddim/samples/ddpm.safetensors",
        timing="results/ddim/timing/ddpm.json",
    params:
        sampling=DDIM_SAMPLING_CONFIG,
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
    params:
        labels=DDIM_LABELS,
        sampling=DDIM_SAMPLING_CONFIG,
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
    script:
        "../scripts/ddim_figures.py"


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
