# The embedded text-to-image model (pixel-space UNet2DConditionModel + tiny CLIP text encoder,
# trained on captioned shapes) that prompt-to-prompt uses when p2p.model.source is train, and the
# ground-truth evaluation of prompt-to-prompt on it (attribute reader, edit success, preservation).

from diffusion_report.models.files import T2I_WEIGHT_FILES

T2I = config["t2i"]
# Shipped weights are inputs (edits to them rerun the rule); training has none.
T2I_TRAIN_INPUT = (
    {} if T2I["train"] else shipped_weights(T2I["weights"], T2I_WEIGHT_FILES)
)


rule t2i_train:
    input:
        **T2I_TRAIN_INPUT,
    output:
        model=directory("results/t2i/model"),
        loss="results/t2i/loss.csv",
        loss_plot="results/t2i/loss.png",
        summary="results/t2i/train_summary.csv",
    log:
        "logs/t2i_train/t2i_train.log",
    benchmark:
        "benchmarks/t2i_train/t2i_train.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=3000,
        runtime=240 if T2I["train"] else 5,
    params:
        # only what makes (or checks) the weights: changing an evaluation setting reruns no model
        t2i={
            k: T2I[k]
            for k in ("train", "weights", "data", "model", "schedule", "training")
        },
        seed=config["seed"],
        device=config["device"],
        checkpoint="results/t2i/.train_checkpoint.pt",
    script:
        "../scripts/t2i_train.py"


rule t2i_reader:
    output:
        csv="results/t2i/reader_accuracy.csv",
        # the fitted reader, read by every rule that scores images (instead of fitting it again)
        reader="results/t2i/reader.json",
    log:
        "logs/t2i_reader/t2i_reader.log",
    benchmark:
        "benchmarks/t2i_reader/t2i_reader.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=10,
    params:
        t2i={k: T2I[k] for k in ("data", "reader")},
        seed=config["seed"],
    script:
        "../scripts/t2i_reader.py"


rule t2i_samples:
    input:
        model="results/t2i/model",
        reader="results/t2i/reader.json",
    output:
        grid=report(
            "results/t2i/samples.png",
            caption="../report/captions/t2i.rst",
            category="Text-to-image model",
            labels={"figure": "samples"},
        ),
        accuracy="results/t2i/caption_accuracy.csv",
    log:
        "logs/t2i_samples/t2i_samples.log",
    benchmark:
        "benchmarks/t2i_samples/t2i_samples.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        t2i={k: T2I[k] for k in ("data", "reader", "samples", "eval")},
        seed=config["seed"],
    script:
        "../scripts/t2i_samples.py"


rule t2i_eval:
    input:
        model="results/t2i/model",
        reader="results/t2i/reader.json",
    output:
        per_seed="results/t2i/eval_per_seed.csv",
        summary="results/t2i/eval_summary.csv",
        examples=report(
            "results/t2i/eval_examples.png",
            caption="../report/captions/t2i.rst",
            category="Text-to-image model",
            labels={"figure": "evaluation examples"},
        ),
        # how much of each caption word's cross-attention lies on the object (plain images)
        localisation="results/t2i/attention_localisation.csv",
    log:
        "logs/t2i_eval/t2i_eval.log",
    benchmark:
        "benchmarks/t2i_eval/t2i_eval.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        t2i={k: T2I[k] for k in ("data", "reader", "eval")},
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/t2i_eval.py"


rule t2i_tradeoff:
    input:
        model="results/t2i/model",
        reader="results/t2i/reader.json",
    output:
        csv="results/t2i/tradeoff.csv",
        png="results/t2i/tradeoff.png",
    log:
        "logs/t2i_tradeoff/t2i_tradeoff.log",
    benchmark:
        "benchmarks/t2i_tradeoff/t2i_tradeoff.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        t2i={k: T2I[k] for k in ("data", "reader", "eval", "tradeoff")},
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/t2i_tradeoff.py"


rule t2i_reweight:
    input:
        model="results/t2i/model",
        reader="results/t2i/reader.json",
    output:
        csv="results/t2i/reweight.csv",
        png="results/t2i/reweight.png",
        examples="results/t2i/reweight_examples.png",
    log:
        "logs/t2i_reweight/t2i_reweight.log",
    benchmark:
        "benchmarks/t2i_reweight/t2i_reweight.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        t2i={k: T2I[k] for k in ("data", "reader", "eval", "reweight_sweep")},
        seed=config["seed"],
        device=config["device"],
    script:
        "../scripts/t2i_reweight.py"


# The showcased p2p edits (p2p.edits), read by the attribute reader beside the evaluation's rates.
SHOWCASE_EDITS = [e["name"] for e in config["p2p"]["edits"]]


rule t2i_showcase:
    input:
        reader="results/t2i/reader.json",
        eval_summary="results/t2i/eval_summary.csv",
        images=expand(
            "results/p2p/{edit}/{image}.png",
            edit=SHOWCASE_EDITS,
            image=("source", "edit", "baseline"),
        ),
    output:
        csv="results/t2i/showcase.csv",
    log:
        "logs/t2i_showcase/t2i_showcase.log",
    benchmark:
        "benchmarks/t2i_showcase/t2i_showcase.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=1500,
        runtime=10,
    params:
        edits=config["p2p"]["edits"],
        p2p={
            k: config["p2p"].get(k)
            for k in ("num_inference_steps", "guidance_scale", "self_max_tokens")
        },
        t2i={k: T2I[k] for k in ("data", "reader", "eval")},
        seed=config["seed"],
    script:
        "../scripts/t2i_showcase.py"


if config["p2p"]["enabled"] and config["p2p"]["model"]["source"] == "train":
    REPORT_INPUTS["t2i"] = {
        "summary": "results/t2i/train_summary.csv",
        "loss": "results/t2i/loss.csv",
        "loss_plot": "results/t2i/loss.png",
        "reader": "results/t2i/reader_accuracy.csv",
        "samples": "results/t2i/samples.png",
        "accuracy": "results/t2i/caption_accuracy.csv",
        "eval_summary": "results/t2i/eval_summary.csv",
        "eval_examples": "results/t2i/eval_examples.png",
        "localisation": "results/t2i/attention_localisation.csv",
    }
    if T2I["tradeoff"]["enabled"]:
        REPORT_INPUTS["t2i"]["tradeoff"] = "results/t2i/tradeoff.csv"
        REPORT_INPUTS["t2i"]["tradeoff_png"] = "results/t2i/tradeoff.png"
    if T2I["reweight_sweep"]["enabled"]:
        REPORT_INPUTS["t2i"]["reweight"] = "results/t2i/reweight.csv"
        REPORT_INPUTS["t2i"]["reweight_png"] = "results/t2i/reweight.png"
        REPORT_INPUTS["t2i"]["reweight_examples"] = "results/t2i/reweight_examples.png"
