# Exercise 3: forward diffusion of clean images, MSE per timestep against its expectation.

from diffusion_report.images import decode_mem_mb, resolve_image

FWD = config["forward"]
# The image files themselves (scikit-image samples resolved to their files): inputs, so replacing
# an image's content reruns the stage.
FWD_IMAGE_FILES = [str(resolve_image(s)) for s in FWD["images"]]


rule forward_clean:
    input:
        images=FWD_IMAGE_FILES,
    output:
        tensor="results/forward/x0.safetensors",
        png="results/forward/clean.png",
    log:
        "logs/forward_clean/forward_clean.log",
    benchmark:
        "benchmarks/forward_clean/forward_clean.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        # ~600 MB of libraries, plus what decoding the largest image takes (its header's size and mode)
        mem_mb=lambda wildcards: 1000 + decode_mem_mb(FWD["images"]),
        runtime=5,
    params:
        images=FWD["images"],
        size=FWD["image_size"],
    script:
        "../scripts/forward_clean.py"


rule forward_grid:
    input:
        x0="results/forward/x0.safetensors",
    output:
        png=report(
            "results/forward/grid.png",
            caption="../report/captions/forward_grid.rst",
            category="Forward diffusion",
            labels={"figure": "noisy-image grid"},
        ),
    log:
        "logs/forward_grid/forward_grid.log",
    benchmark:
        "benchmarks/forward_grid/forward_grid.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        timesteps=FWD["show_timesteps"],
        schedule=config["schedule"],
        seed=config["seed"],
    script:
        "../scripts/forward_grid.py"


rule forward_mse:
    input:
        x0="results/forward/x0.safetensors",
    output:
        csv=report(
            "results/forward/mse.csv",
            caption="../report/captions/forward_mse_table.rst",
            category="Forward diffusion",
            labels={"table": "MSE per timestep"},
        ),
    log:
        "logs/forward_mse/forward_mse.log",
    benchmark:
        "benchmarks/forward_mse/forward_mse.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=10,
    params:
        t_max=FWD["mse_max_t"],
        schedule=config["schedule"],
        seed=config["seed"],
    script:
        "../scripts/forward_mse.py"


rule forward_plots:
    input:
        csv="results/forward/mse.csv",
    output:
        shown=report(
            "results/forward/mse_shown.png",
            caption="../report/captions/forward_mse.rst",
            category="Forward diffusion",
            labels={"figure": "MSE at the shown timesteps"},
        ),
        curve=report(
            "results/forward/mse_curve.png",
            caption="../report/captions/forward_mse.rst",
            category="Forward diffusion",
            labels={"figure": "MSE curve and expectation"},
        ),
    log:
        "logs/forward_plots/forward_plots.log",
    benchmark:
        "benchmarks/forward_plots/forward_plots.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        timesteps=FWD["show_timesteps"],
    script:
        "../scripts/forward_plots.py"


if FWD["enabled"]:
    REPORT_INPUTS["forward"] = {
        "clean": "results/forward/clean.png",
        "grid": "results/forward/grid.png",
        "mse": "results/forward/mse.csv",
        "mse_shown": "results/forward/mse_shown.png",
        "mse_curve": "results/forward/mse_curve.png",
    }
