# Exercise 5: prompt-to-prompt editing by controlling attention (per edit: source, edited and
# no-control images from one x_T, attention maps, pixel distances), and a table of all edits.

P2P = config["p2p"]
P2P_EDITS = {e["name"]: e for e in P2P["edits"]}
P2P_PRETRAINED = P2P["model"]["source"] == "pretrained"
# The trained model folder (rule t2i_train's output) when p2p.model.source is train.
P2P_MODEL_INPUT = {} if P2P_PRETRAINED else {"model": "results/t2i/model"}
# ... and the attribute reader (rule t2i_reader), for the rules that score the embedded model's images.
P2P_READER_INPUT = {} if P2P_PRETRAINED else {"reader": "results/t2i/reader.json"}
# Given images to invert and edit (p2p.real_edits): the embedded model, or a pretrained one through its VAE
# (image files only: the drawn shapes are the embedded model's, so a pretrained model skips them).
P2P_REAL = {
    e["name"]: e
    for e in P2P.get("real_edits") or []
    if not (P2P_PRETRAINED and isinstance(e["image"], dict))
}
# The same edits over many drawn images, inverted then edited (p2p.real_eval): the embedded model only.
P2P_REAL_EVAL = not P2P_PRETRAINED and P2P.get("real_eval", {}).get("enabled", False)


rule p2p_edit:
    input:
        unpack(lambda wildcards: P2P_MODEL_INPUT),
    output:
        source="results/p2p/{edit}/source.png",
        edit="results/p2p/{edit}/edit.png",
        baseline="results/p2p/{edit}/baseline.png",
        side_by_side=report(
            "results/p2p/{edit}/side_by_side.png",
            caption="../report/captions/p2p.rst",
            category="Prompt-to-prompt",
            labels={"edit": "{edit}", "figure": "source, edit, baseline"},
        ),
        attention="results/p2p/{edit}/attention.png",
        metrics="results/p2p/{edit}/metrics.csv",
    log:
        "logs/p2p_edit/{edit}.log",
    benchmark:
        "benchmarks/p2p_edit/{edit}.tsv"
    wildcard_constraints:
        edit="|".join(P2P_EDITS),
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=10000 if P2P_PRETRAINED else 3000,
        runtime=180 if P2P_PRETRAINED else 20,
    params:
        p2p={k: v for k, v in P2P.items() if k != "edits"},
        edit=lambda wildcards: P2P_EDITS[wildcards.edit],
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/p2p_edit.py"


rule p2p_real_edit:
    input:
        unpack(get_real_image),
        unpack(lambda wildcards: P2P_MODEL_INPUT),
        unpack(lambda wildcards: P2P_READER_INPUT),
    output:
        inversion="results/p2p/real/{name}/inversion.safetensors",
        input="results/p2p/real/{name}/input.png",
        reconstruction_ddim="results/p2p/real/{name}/reconstruction_ddim.png",
        reconstruction_null_text="results/p2p/real/{name}/reconstruction_null_text.png",
        edits=directory("results/p2p/real/{name}/edits"),
        figure=report(
            "results/p2p/real/{name}/figure.png",
            caption="../report/captions/p2p_real.rst",
            category="Prompt-to-prompt",
            labels={"image": "{name}", "figure": "inversion and edits"},
        ),
        metrics="results/p2p/real/{name}/metrics.csv",
        timing="results/p2p/real/{name}/timing.csv",
    log:
        "logs/p2p_real_edit/{name}.log",
    benchmark:
        "benchmarks/p2p_real_edit/{name}.tsv"
    wildcard_constraints:
        name="|".join(P2P_REAL) or "(?!)",
    conda:
        "../envs/torch.yaml"
    # one thread: the embedded model's ops are too small to share; two images run side by side
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        # what loading the model and the edits' controllers read (a change to p2p.edits or to
        # p2p.guidance_scale or p2p.scheduler does not rerun it: each image has its own guidance, and DDIM)
        p2p={
            k: P2P[k]
            for k in ("model", "fp16", "mask_threshold", "self_max_tokens")
            if k in P2P
        },
        entry=lambda wildcards: P2P_REAL[wildcards.name],
        t2i={k: config["t2i"][k] for k in ("data", "reader")},
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/p2p_real_edit.py"


rule p2p_metrics:
    input:
        metrics=expand("results/p2p/{edit}/metrics.csv", edit=list(P2P_EDITS)),
    output:
        csv="results/p2p/metrics.csv",
    log:
        "logs/p2p_metrics/p2p_metrics.log",
    benchmark:
        "benchmarks/p2p_metrics/p2p_metrics.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../scripts/p2p_metrics.py"


# Drawn images, inverted and edited with t2i.eval's settings, against t2i.eval's rates on generated images.
rule p2p_real_eval:
    input:
        model="results/t2i/model",
        reader="results/t2i/reader.json",
        eval_summary="results/t2i/eval_summary.csv",
    output:
        per_image="results/p2p/real_eval/per_image.csv",
        summary="results/p2p/real_eval/summary.csv",
        timing="results/p2p/real_eval/timing.csv",
        examples=report(
            "results/p2p/real_eval/examples.png",
            caption="../report/captions/p2p_real_eval.rst",
            category="Prompt-to-prompt",
            labels={"image": "drawn images", "figure": "inversion and edits"},
        ),
    log:
        "logs/p2p_real_eval/p2p_real_eval.log",
    benchmark:
        "benchmarks/p2p_real_eval/p2p_real_eval.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        p2p={k: P2P[k] for k in ("model", "fp16", "real_eval") if k in P2P},
        t2i={k: config["t2i"][k] for k in ("data", "reader", "eval")},
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/p2p_real_eval.py"


if P2P["enabled"]:
    REPORT_INPUTS["p2p"] = {"metrics": "results/p2p/metrics.csv"}
    # the attribute reader's verdict on each edit (rule t2i_showcase)
    if not P2P_PRETRAINED:
        REPORT_INPUTS["p2p"]["showcase"] = "results/t2i/showcase.csv"
    # drawn images, inverted then edited, against the evaluation on generated images (rule p2p_real_eval)
    if P2P_REAL_EVAL:
        REPORT_INPUTS["p2p"].update(
            real_eval_summary="results/p2p/real_eval/summary.csv",
            real_eval_per_image="results/p2p/real_eval/per_image.csv",
            real_eval_timing="results/p2p/real_eval/timing.csv",
            real_eval_examples="results/p2p/real_eval/examples.png",
        )
    # given images: inverted, reconstructed and edited (rule p2p_real_edit)
    for _name in P2P_REAL:
        REPORT_INPUTS["p2p"][
            f"real_{_name}_figure"
        ] = f"results/p2p/real/{_name}/figure.png"
        REPORT_INPUTS["p2p"][
            f"real_{_name}_metrics"
        ] = f"results/p2p/real/{_name}/metrics.csv"
        REPORT_INPUTS["p2p"][
            f"real_{_name}_timing"
        ] = f"results/p2p/real/{_name}/timing.csv"
    for _name in P2P_EDITS:
        REPORT_INPUTS["p2p"][
            f"{_name}_figure"
        ] = f"results/p2p/{_name}/side_by_side.png"
        REPORT_INPUTS["p2p"][
            f"{_name}_attention"
        ] = f"results/p2p/{_name}/attention.png"
