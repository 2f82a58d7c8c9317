"""The benchmark scripts run, check what they compare, and write the CSV the README quotes.

Timings are not asserted (speed is measured in bench/, not in tests); what is asserted is what
would be wrong if a script or the code it measures broke: equal outputs, the attention routes each
variant takes, the data share of a training step, and the CSV columns.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import ROOT

pytestmark = pytest.mark.slow


def bench(script: str, *args: str, timeout: int = 600) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_bench_forward_agrees_with_the_loop(tmp_path):
    out = tmp_path / "forward.csv"
    bench("bench_forward.py", "--t-max", "20", "--repeats", "1", "--out", str(out))  # fails if table != loop
    df = pd.read_csv(out)
    assert list(df["what"]) == ["vectorised mse_per_timestep", "per-timestep loop", "noise draws alone, threaded (floor)"]
    assert (df["seconds"] > 0).all() and df["machine"].str.contains("cores").all()


def test_bench_ddim_quality_stacked_equals_separate(tmp_path):
    out = tmp_path / "ddim_quality.csv"
    bench("bench_ddim_quality.py", "--steps", "2", "--num-samples", "2", "--repeats", "1", "--out", str(out))
    df = pd.read_csv(out)  # the script exits non-zero when stacked and separate samples differ
    assert list(df["steps"]) == [2] and int(df["variants"].iloc[0]) == 4
    assert (df["max_abs_diff"] <= 1e-4).all() and (df["stacked_s_per_cell"] > 0).all()


def test_bench_ddim_matches_ddimpipeline(tmp_path):
    out = tmp_path / "ddim.csv"
    bench("bench_ddim.py", "--steps", "2", "5", "--num-samples", "2", "--repeats", "1", "--out", str(out))
    df = pd.read_csv(out)
    assert list(df["steps"]) == [2, 5]
    assert (df["max_abs_diff"] <= 1e-5).all()
    assert {"ours_over_diffusers", "ours_over_floor"} <= set(df.columns)


def test_bench_inversion_batched_equals_one_at_a_time(tmp_path):
    out = tmp_path / "inversion.csv"
    bench("bench_inversion.py", "--images", "2", "--steps", "3", "--repeats", "1", "--out", str(out))  # exits non-zero if they differ
    df = pd.read_csv(out).set_index("variant")
    assert list(df.index) == ["one_at_a_time", "batched", "ddim_only"] and (df["images"] == 2).all()
    assert (df["max_abs_diff_batched"] <= 0.1).all() and (df["mean_abs_diff_batched"] <= 2e-3).all() and (df["s_per_image"] > 0).all()
    assert df.loc["one_at_a_time", "speedup_vs_one_at_a_time"] == 1.0

def test_bench_p2p_routes_attention_as_designed_and_measures_memory(tmp_path):
    out = tmp_path / "p2p.csv"
    bench("bench_p2p.py", "--tiny", "--steps", "4", "--repeats", "1", "--memory", "--memory-variants", "replace_explicit",
          "--out", str(out))
    df = pd.read_csv(out).set_index("variant")
    assert list(df.index) == ["plain", "store", "replace", "refine", "replace_explicit"]
    calls = {v: tuple(map(int, df.loc[v, "explicit_attention_calls"].split("/"))) for v in df.index if v != "plain"}
    total = calls["replace_explicit"][1]
    assert calls["replace_explicit"] == (total, total)  # the original's approach: explicit everywhere
    assert 0 < calls["store"][0] < calls["replace"][0] < total  # ours: only where needed
    assert df.loc["plain", "explicit_attention_calls"] == "none"
    source = {v: tuple(map(int, df.loc[v, "source_query_calls"].split("/"))) for v in ("store", "replace", "replace_explicit")}
    assert source["store"][0] == source["replace_explicit"][0] == 0 < source["replace"][0]  # self injection: fused
    measured = df.loc[["plain", "replace_explicit"]]  # one process each
    assert (measured["peak_mib"] > 0).all() and (measured["total_mib"] >= measured["peak_mib"]).all()
    assert df.loc[["store", "replace", "refine"], "peak_mib"].isna().all()


def test_bench_train_reports_throughput_and_data_share(tmp_path):
    out = tmp_path / "train.csv"
    bench("bench_train.py", "--steps", "1", "--threads", "1", "--out", str(out))
    df = pd.read_csv(out)
    assert list(df["model"]) == ["digits DDPM (ddim_train)", "embedded text-to-image (t2i_train)"]
    assert (df["samples_per_s"] > 0).all() and (df["data_share"] < 0.5).all()


def test_bench_pipeline_on_a_finished_run(tiny_run, tmp_path):
    work, _ = tiny_run
    bench("bench_pipeline.py", "--workdir", str(work), "--no-cold", "--preset", "presets/tiny.yaml", "--repeats", "1",
          "--out-dir", str(tmp_path))
    summary = pd.read_csv(tmp_path / "pipeline_summary.csv").iloc[0]
    assert summary["noop_rerun_jobs"] == 0
    # the edit, the table of edits, the reader's verdict on the showcased edits, the report
    assert summary["edit_change_jobs"] == "all:1 p2p_edit:1 p2p_metrics:1 report_html:1 report_pdf:1 t2i_showcase:1"
    rules = pd.read_csv(tmp_path / "pipeline.csv").set_index("rule")
    assert {"forward_mse", "ddim_train", "p2p_edit", "report_html"} <= set(rules.index)
    edits = yaml.safe_load((ROOT / "config.yaml").read_text())["p2p"]["edits"]  # the tiny preset keeps them: a job each
    assert rules.loc["p2p_edit", "jobs"] == len(edits) == 5 and (rules["max_rss_mib"] > 0).all()
    assert summary["report_render_s"] > 0 and summary["peak_rss_rule"] in rules.index


def test_bench_startup_times_each_rule_scripts_imports(tmp_path):
    out = tmp_path / "startup.csv"
    bench("bench_startup.py", "--ref", "HEAD", "--rules", "report_html", "forward_clean", "--repeats", "1", "--out", str(out))
    df = pd.read_csv(out).set_index(["rule", "checkout"])
    assert (df["seconds"] > 0).all()
    assert df.loc[("report_html", "ours"), "loads"] == "-"  # the report layer loads no torch
    assert "torch" in df.loc[("forward_clean", "ours"), "loads"] and "diffusers" not in df.loc[("forward_clean", "ours"), "loads"]
    assert df.loc[("import torch", "ours"), "loads"] == "torch"


def test_bench_t2i_eval_batches_with_the_same_table(tmp_path):
    out = tmp_path / "t2i_eval.csv"
    bench("bench_t2i_eval.py", "--seeds", "2", "--edits", "shape_swap", "--steps", "2", "--repeats", "1", "--threads", "1",
          "--out", str(out))
    df = pd.read_csv(out)
    assert len(df) == 3 and df["max_abs_diff"].max() < 1e-3 and (df["seconds"] > 0).all()
    assert (df["rows_with_a_discrete_change"] == 0).all()
    assert list(df["images_sampled"]) == [8, 8, 6]  # the shared source: three images a case, not four


def test_bench_precision_runs_both_and_bf16_stays_close(tmp_path):
    out = tmp_path / "precision.csv"
    bench("bench_precision.py", "--steps", "3", "--num-samples", "2", "--repeats", "1", "--out", str(out))
    df = pd.read_csv(out)
    assert list(df["steps"]) == [3] and (df["float32_s"] > 0).all() and (df["bfloat16_s"] > 0).all()
    # bf16 was applied (the samples moved) and stayed close to float32 (random-weight UNet, 3 steps)
    assert (df["mean_abs_diff"] > 0).all() and (df["mean_abs_diff"] < 0.02).all() and (df["max_abs_diff"] < 0.1).all()


def test_random_models_have_the_hub_layouts_the_homework_preset_loads(tmp_path):
    """bench/random_models.py: google/ddpm-cifar10-32's architecture and schedule, and Stable Diffusion's folder
    layout (here at the tests' sizes), loaded by the pipeline's own loaders and accepted by the preset's config check."""
    import copy

    sys.path.insert(0, str(ROOT / "bench"))
    import random_models

    from diffusion_report.config import ConfigError, validate_config
    from diffusion_report.models import ddpm
    from diffusion_report.models.text2image import load_text2image

    cifar = random_models.write_ddpm(tmp_path / random_models.CIFAR10)
    assert {"config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json"} <= {p.name for p in cifar.iterdir()}
    unet, schedule, prediction = ddpm.load_model(str(cifar))
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == 35.7 and prediction == "epsilon"
    assert schedule.T == 1000 and abs(float(schedule.betas[1]) - 1e-4) < 1e-9 and abs(float(schedule.betas[-1]) - 0.02) < 1e-9
    sd = random_models.write_sd(tmp_path / random_models.SD, smoke=True)
    assert {p.name for p in sd.iterdir()} == {"unet", "text_encoder", "tokenizer", "vae", "scheduler"}
    pipe = load_text2image(sd, config_key="p2p.model.pretrained", device="cpu", scheduler="pndm")
    assert pipe.vae is not None and pipe.max_length == 77 and type(pipe.scheduler).__name__ == "PNDMScheduler"
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    preset = yaml.safe_load((ROOT / "presets" / "hw4.yaml").read_text())
    for block in ("ddim", "p2p"):
        cfg[block].update(copy.deepcopy(preset[block]))
    cfg["ddim"]["model"]["pretrained"], cfg["p2p"]["model"]["pretrained"] = str(cifar), str(sd)
    validate_config(cfg, ROOT / "schemas" / "config.schema.yaml", base_dir=ROOT, workflow_dir=ROOT)  # no error
    (sd / "vae" / "config.json").unlink()
    with pytest.raises(ConfigError, match="p2p.model.pretrained"):
        validate_config(cfg, ROOT / "schemas" / "config.schema.yaml", base_dir=ROOT, workflow_dir=ROOT)


def test_bench_gpu_runs_every_step_end_to_end_at_the_smoke_size(tmp_path):
    """The prepared GPU script on the CPU: each step ran, the homework preset's rules on the random folders, the
    two-object model's recipe, Table 1's cells, and only what the device tool brings back written to --out."""
    import tarfile

    out = tmp_path / "out"
    # the steps that drive the workflow, and one benchmark script (the others: their own tests above)
    bench("bench_gpu.py", "--smoke", "--only", "t2i_train", "ddim_cifar10", "hw4", "ddim_table1", "--out", str(out),
          "--scratch", str(tmp_path / "scratch"), "--deadline", "1500", timeout=1800)
    df = pd.read_csv(out / "gpu.csv")
    walls = df[df["what"] == "wall time of the step"].set_index("step")
    assert list(walls.index) == ["t2i_train", "ddim_cifar10", "hw4", "ddim_table1"]
    assert (walls["status"] == "ok").all(), walls
    jobs = df[(df["step"] == "hw4") & df["what"].str.startswith("job ")]["what"].str.split().str[1]
    assert {"ddim_sample", "ddim_reconstruction", "ddim_interpolation", "p2p_edit", "p2p_real_edit"} <= set(jobs)
    assert "report_html" not in set(jobs)
    per_image = df[df["what"] == "job ddim_sample 2: per image (2 samples)"]
    job = df[df["what"] == "job ddim_sample 2"]
    assert len(per_image) == 1 and float(per_image["value"].iloc[0]) == pytest.approx(float(job["value"].iloc[0]) / 2, abs=1e-3)
    ddim = df[df["step"] == "ddim_cifar10"]
    assert float(ddim[ddim["what"] == "steps=2, batch=2: max_abs_diff"]["value"].iloc[0]) <= 1e-5  # against DDIMPipeline
    with tarfile.open(out / "t2i_model.tar") as tf:
        recipe = json.load(tf.extractfile("results/t2i/model/t2i_config.json"))
    assert recipe["data"]["two_objects"] == 0.5 and recipe["data"]["colour_word_prob"] == 0.75
    assert recipe["model"]["max_length"] == 16 and recipe["training"]["steps"] == 4
    with tarfile.open(out / "ddim_table1.tar") as tf:
        names = tf.getnames()
        quality = pd.read_csv(tf.extractfile(next(n for n in names if n.endswith("quality.csv"))))
    assert sorted(set(quality["steps"]) - {0}) == [2, 5]  # (0: the real held-out digits' row)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bench.tar", "ddim_table1.tar", "gpu.csv", "gpu.log", "hw4.tar", "t2i_model.tar"]
    assert all(p.stat().st_size < 16 * 2**20 for p in out.iterdir())  # the device tool's limit per file
