# Exercises 1-2: the derivations (report/theory.tex rendered to HTML with SVG math) and numerical
# checks of every derived identity on the configured schedule.

TH = config["theory"]


# The forward stage's clean images and MSE table are checked too, when that stage is enabled.
TH_FORWARD_INPUTS = (
    {"mse": "results/forward/mse.csv", "x0": "results/forward/x0.safetensors"}
    if config["forward"]["enabled"]
    else {}
)


rule theory_render:
    input:
        tex=workflow_file("report/theory.tex"),
        bib=workflow_file("report/references.bib"),
    output:
        html="results/theory/theory.html",
        # the reference list, apart: the report prints it as its own last section
        refs="results/theory/references.html",
    log:
        "logs/theory_render/theory_render.log",
    benchmark:
        "benchmarks/theory_render/theory_render.tsv"
    conda:
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/theory_render.py"


rule theory_checks:
    input:
        **TH_FORWARD_INPUTS,
    output:
        csv="results/theory/checks.csv",
        params="results/theory/parameters.json",
    log:
        "logs/theory_checks/theory_checks.log",
    benchmark:
        "benchmarks/theory_checks/theory_checks.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=lambda wc: 1000
        + TH["mc_samples"] * 16 * (2 * len(TH["check_timesteps"]) + 4) // 1_000_000,
        runtime=lambda wc: 5 + TH["mc_samples"] * config["schedule"]["T"] // 400_000_000,
    params:
        schedule=config["schedule"],
        theory=TH,
        seed=config["seed"],
    script:
        "../scripts/theory_checks.py"


if TH["enabled"]:
    REPORT_INPUTS["theory"] = {
        "html": "results/theory/theory.html",
        "refs": "results/theory/references.html",
        "checks": "results/theory/checks.csv",
        "params": "results/theory/parameters.json",
    }
