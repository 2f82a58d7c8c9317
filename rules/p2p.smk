# Exercise 5: prompt-to-prompt editing by controlling attention (per edit: source, edited and
# no-control images from one x_T, attention maps, pixel distances), and a table of all edits.

P2P = config["p2p"]
P2P_EDITS = {e["name"]: e for e in P2P["edits"]}
P2P_PRETRAINED = P2P["model"]["source"] == "pretrained"
# The trained model folder (rule t2i_train's output) when p2p.model.source is train.
P2P_MODEL_INPUT = {} if P2P_PRETRAINED else {"model": "results/t2i/model"}


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


if P2P["enabled"]:
    REPORT_INPUTS["p2p"] = {"metrics": "results/p2p/metrics.csv"}
    # the attribute reader's verdict on each edit (rule t2i_showcase)
    if not P2P_PRETRAINED:
        REPORT_INPUTS["p2p"]["showcase"] = "results/t2i/showcase.csv"
    for _name in P2P_EDITS:
        REPORT_INPUTS["p2p"][
            f"{_name}_figure"
        ] = f"results/p2p/{_name}/side_by_side.png"
        REPORT_INPUTS["p2p"][
            f"{_name}_attention"
        ] = f"results/p2p/{_name}/attention.png"
