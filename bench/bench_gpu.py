"""The prepared script for a lent GPU: every measurement that waits on one, in one call, within a deadline.

The device tool lends a GPU machine for minutes, rarely, bare (no diffusers, no Snakemake, no network).
This script is what a session runs there, once, so that nothing is improvised on the clock. Its steps,
most wanted first; each runs in its own process with a time cap, a failing step is recorded and the
next one runs, and a step that no longer fits before ``--deadline`` is skipped (recorded as such):

1. ``t2i_train``     the embedded text-to-image model with two objects in half of its images and a
                     quarter of its captions colourless (issue 17's default two-object given image),
                     trained by rule ``t2i_train`` on the GPU: the model folder comes back in
                     ``t2i_model.tar`` (~3.3 h on 2 CPU cores);
2. ``p2p_sd``        ``bench_p2p.py --random-sd --fp16``: prompt-to-prompt against plain generation on
                     Stable Diffusion v1.4's architecture (random weights), 50 steps, guidance 7.5:
                     time per pair, peak GPU memory, the edit/plain ratios (issue 20);
3. ``ddim_cifar10``  ``bench_ddim.py --arch cifar10``: our DDIM sampler against diffusers'
                     ``DDIMPipeline`` on google/ddpm-cifar10-32's architecture, 64 samples (issue 20);
4. ``hw4``           ``presets/hw4.yaml`` end to end (every rule but the report's, which needs
                     WeasyPrint and pandoc) on random-weight folders in the diffusers layout
                     (``random_models.py``): wall time per rule, peak GPU memory of the run (issue 20);
5. ``inversion_sd``  ``bench_inversion.py --random-sd --fp16``: DDIM and null-text inversion time per
                     image on Stable Diffusion's architecture (issue 17);
6. ``ddim_table1``   the DDIM paper's Table 1 on the digits model with ``--table1-samples`` samples a
                     cell and the S = 1000 column (``presets/ddim_table1.yaml`` plus 1000; issue 15).

Writes into ``--out``: ``gpu.csv`` (one row per measured figure: step, status, what, value, unit),
``gpu.log`` (every step's output), ``bench.tar`` (the benchmark scripts' own CSVs), ``t2i_model.tar``,
``hw4.tar`` (the run's benchmarks/, logs/ and metrics CSVs) and ``ddim_table1.tar``: six files, within
what the device tool brings back (8 files of 16 MiB). ``gpu.csv`` is rewritten after every step, so a
call cut short still returns what was measured.

On the GPU machine (its Python 3.12 holds torch and transformers; the rest travels as wheels made here
by ``bash bench/gpu_wheels.sh``), as the device tool's ``run`` with ``carry: [".whl"]``:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
      && PYTHONPATH=/tmp/site:scripts PYTHONUNBUFFERED=1 python3 bench/bench_gpu.py --out $OUT --deadline 520

Here, a check of the whole script on the CPU at the tests' sizes (tests/test_bench.py runs it):

    .venv/bin/python bench/bench_gpu.py --smoke --out /tmp/gpu-smoke
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"

# Issue 17's default model: the two-object data of presets/two_objects.yaml with the default's colourless
# captions (refine_colour starts from one), the recipe of models/t2i-pairs (10000 steps of batch 64).
T2I_BOTH = {"t2i": {"train": True, "data": {"two_objects": 0.5, "colour_word_prob": 0.75},
                    "model": {"max_length": 16}, "training": {"steps": 10000, "device": "auto"}}}
TABLE1_STEPS = [10, 20, 50, 100, 1000]
CORES = min(16, os.cpu_count() or 2)  # Snakemake's --cores (the GPU machines have 16)


def step_caps(smoke: bool) -> dict[str, int]:
    """Seconds each step may take at most (the H100 estimates with room; the CPU smoke run's sizes)."""
    if smoke:
        return dict.fromkeys(STEPS, 600)
    return {"t2i_train": 240, "p2p_sd": 150, "ddim_cifar10": 90, "hw4": 240, "inversion_sd": 120, "ddim_table1": 240}


class Runner:
    """Runs the steps in order within the deadline and keeps gpu.csv and gpu.log current."""

    def __init__(self, out: Path, scratch: Path, deadline: float, smoke: bool):
        self.out, self.smoke = out, smoke
        self.t_end = time.monotonic() + deadline
        self.rows: list[dict] = []
        self.scratch = scratch  # outside --out: the random-weight folders are GBs, and only --out comes back
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.log = open(out / "gpu.log", "a", buffering=1)  # noqa: SIM115 - open for the whole run
        self.env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
                        PYTHONPATH=os.pathsep.join([str(ROOT / "scripts"), str(BENCH), os.environ.get("PYTHONPATH", "")]))
        self.device = "cpu" if smoke else "cuda"

    def left(self) -> float:
        return self.t_end - time.monotonic()

    def add(self, step: str, status: str, what: str, value, unit: str = "") -> None:
        self.rows.append({"step": step, "status": status, "what": what, "value": value, "unit": unit})
        cols = ["step", "status", "what", "value", "unit"]
        with open(self.out / "gpu.csv.tmp", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(self.out / "gpu.csv.tmp", self.out / "gpu.csv")

    def sh(self, cmd: list[str], timeout: float, cwd: Path = ROOT) -> int:
        """Run ``cmd`` (its output into gpu.log) and kill its whole process group past ``timeout``."""
        self.log.write(f"\n$ {' '.join(map(str, cmd))}\n")
        proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            return proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            self.log.write(f"[killed after {timeout:.0f} s]\n")
            return 124

    def snakemake(self, work: Path, overlays: list[Path], timeout: float, *extra: str) -> int:
        cmd = [sys.executable, "-m", "snakemake", "-s", ROOT / "Snakefile", "--directory", work,
               "--cores", str(CORES), "--scheduler", "greedy", "--keep-going", *extra,
               "--configfile", ROOT / "config.yaml", *overlays]
        return self.sh(cmd, timeout)

    def step(self, name: str, cap: int, fn) -> None:
        budget = min(cap, self.left() - 5)
        if budget < min(cap, 30):
            self.add(name, "skipped", "seconds left before the deadline", round(self.left(), 1), "s")
            return
        t0 = time.monotonic()
        try:
            rc = fn(budget)
        except Exception as exc:  # noqa: BLE001 - a broken step is recorded, the next one runs
            self.log.write(f"[{name}] {type(exc).__name__}: {exc}\n")
            rc = 1
        status = "ok" if rc == 0 else ("timeout" if rc == 124 else f"failed (exit {rc})")
        self.add(name, status, "wall time of the step", round(time.monotonic() - t0, 1), "s")

    def overlay(self, name: str, cfg: dict) -> Path:
        path = self.scratch / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def tar(self, name: str, base: Path, paths: list[str]) -> None:
        with tarfile.open(self.out / name, "w") as tf:
            for p in paths:
                for f in sorted(base.glob(p)):
                    tf.add(f, arcname=str(f.relative_to(base)))

    def bench_csv(self, name: str) -> Path:
        """Where a benchmark script of this run writes its CSV (none left from an earlier run on the machine)."""
        path = self.scratch / f"{name}.csv"
        path.unlink(missing_ok=True)
        return path

    def csv_rows(self, step: str, path: Path, what_cols: list[str], value_cols: dict[str, str]) -> None:
        """One gpu.csv row per (row of a benchmark CSV, value column): ``what`` names the row by ``what_cols``."""
        if not path.exists():
            return
        with open(path) as fh:
            for r in csv.DictReader(fh):
                label = ", ".join(f"{c}={r[c]}" for c in what_cols)
                for col, unit in value_cols.items():
                    if r.get(col) not in (None, ""):
                        self.add(step, "ok", f"{label}: {col}", r[col], unit)


# ---------------------------------------------------------------------------------------------- steps
def t2i_train(run: Runner, budget: float) -> int:
    work = run.scratch / "t2i"
    cfg = copy.deepcopy(T2I_BOTH)
    cfg["device"] = run.device
    if run.smoke:
        cfg["t2i"]["training"].update(steps=4, batch_size=8)
    rc = run.snakemake(work, [run.overlay("t2i_both", cfg)], budget, "results/t2i/model")
    run.tar("t2i_model.tar", work, ["results/t2i/model", "results/t2i/loss.csv", "results/t2i/train_summary.csv",
                                    "logs/t2i_train", "benchmarks/t2i_train"])
    run.csv_rows("t2i_train", work / "results/t2i/train_summary.csv", ["steps", "batch_size"],
                 {"train_seconds": "s", "final_loss": ""})
    return rc


def p2p_sd(run: Runner, budget: float) -> int:
    out = run.bench_csv("p2p_sd")
    args = ["--tiny", "--steps", "3", "--repeats", "1"] if run.smoke else \
        ["--random-sd", "--fp16", "--steps", "50", "--guidance", "7.5", "--repeats", "3"]
    rc = run.sh([sys.executable, BENCH / "bench_p2p.py", *args, "--device", run.device, "--memory", "--out", out], budget)
    run.csv_rows("p2p_sd", out, ["variant", "dtype"], {"median_s": "s per pair", "time_over_plain": "x",
                                                         "peak_mib": "MiB", "total_mib": "MiB"})
    return rc


def ddim_cifar10(run: Runner, budget: float) -> int:
    out = run.bench_csv("ddim_cifar10")
    args = ["--steps", "2", "--num-samples", "2", "--repeats", "1"] if run.smoke else \
        ["--steps", "10", "50", "100", "--num-samples", "64", "--repeats", "3"]
    rc = run.sh([sys.executable, BENCH / "bench_ddim.py", "--arch", "cifar10", *args, "--device", run.device,
                 "--out", out], budget)
    run.csv_rows("ddim_cifar10", out, ["steps", "batch"], {"ours_s": "s", "diffusers_s": "s", "ours_over_diffusers": "x",
                                                            "max_abs_diff": ""})
    return rc


def inversion_sd(run: Runner, budget: float) -> int:
    out = run.bench_csv("inversion_sd")
    args = ["--images", "2", "--steps", "3", "--repeats", "1"] if run.smoke else \
        ["--random-sd", "--fp16", "--images", "2", "--steps", "50", "--guidance", "7.5", "--repeats", "1"]
    rc = run.sh([sys.executable, BENCH / "bench_inversion.py", *args, "--device", run.device, "--out", out], budget)
    run.csv_rows("inversion_sd", out, ["variant", "images"], {"s_per_image": "s per image"})
    return rc


class GpuMemory:
    """Peak GPU memory in use while it runs (nvidia-smi, every 250 ms); None where there is no nvidia-smi."""

    def __init__(self):
        self.peak, self.proc = None, None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "250"],
                                         stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.peak = max(self.peak or 0, int(line.strip()))
            except ValueError:
                pass

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
        return self.peak


def hw4(run: Runner, budget: float) -> int:
    import random_models

    work = run.scratch / "hw4"
    folders = run.scratch / "random-models"
    preset = yaml.safe_load((ROOT / "presets" / "hw4.yaml").read_text())
    t0 = time.monotonic()
    if not (folders / random_models.SD).exists():
        random_models.write_ddpm(folders / random_models.CIFAR10, run.smoke)
        random_models.write_sd(folders / random_models.SD, run.smoke, run.device)
    run.add("hw4", "ok", "random-weight folders written", round(time.monotonic() - t0, 1), "s")
    cfg = {"device": run.device, "theory": {"enabled": False},
           "ddim": {"model": {"pretrained": str(folders / random_models.CIFAR10)}},
           "p2p": {"model": {"pretrained": str(folders / random_models.SD)}}}
    if run.smoke:  # the preset's rules at the tests' sizes: one edit of each kind (a blend, a given photo)
        cfg["forward"] = {"enabled": False}
        cfg["ddim"].update(step_counts=[2], num_samples=2, ddpm_baseline=False, reconstruction={"step_counts": [2], "num_images": 2},
                           interpolation={"pairs": 1, "points": 3, "steps": 2})
        cfg["p2p"].update(num_inference_steps=3, edits=[e for e in preset["p2p"]["edits"] if e.get("blend_words")][:1])
    overlays = [ROOT / "presets" / "hw4.yaml", run.overlay("hw4_random", cfg)]
    mem = GpuMemory()
    rc = run.snakemake(work, overlays, budget - (time.monotonic() - t0), "--omit-from", "report_html", "report_pdf")
    peak = mem.stop()
    run.add("hw4", "ok", "jobs run side by side on the one GPU (snakemake --cores; job times include the sharing)",
            CORES, "cores")
    if peak is not None:
        run.add("hw4", "ok", "peak GPU memory in use during the run (nvidia-smi)", peak, "MiB")
    n_ddim = cfg["ddim"].get("num_samples", preset["ddim"]["num_samples"])
    for tsv in sorted((work / "benchmarks").glob("*/*.tsv")):  # one file per job: benchmarks/<rule>/<job>.tsv
        rule, job = tsv.parent.name, tsv.stem
        with open(tsv) as fh:
            s = sum(float(r["s"]) for r in csv.DictReader(fh, delimiter="\t"))
        run.add("hw4", "ok", f"job {rule} {job}", round(s, 2), "s")
        if rule in ("ddim_sample", "ddim_ddpm_baseline"):  # S = job's step count; the baseline runs all T steps
            run.add("hw4", "ok", f"job {rule} {job}: per image ({n_ddim} samples)", round(s / n_ddim, 4), "s per image")
    run.tar("hw4.tar", work, ["benchmarks", "logs", "results/**/*.csv"])
    return rc


def ddim_table1(run: Runner, budget: float, samples: int) -> int:
    work = run.scratch / "table1"
    steps = [2, 5] if run.smoke else TABLE1_STEPS
    n = 4 if run.smoke else samples
    # the DDPM baseline's 1000 steps give the eta = 1 cell at S = 1000 (not needed at the smoke run's S)
    cfg = {"device": run.device, "ddim": {"step_counts": steps, "num_samples": n, "ddpm_baseline": not run.smoke,
                                          "quality": {"step_counts": steps}}}
    rc = run.snakemake(work, [ROOT / "presets" / "ddim_table1.yaml", run.overlay("table1", cfg)], budget,
                       "--omit-from", "report_html", "report_pdf")
    run.tar("ddim_table1.tar", work, ["results/ddim/*.csv", "results/ddim/*.png", "benchmarks", "logs"])
    return rc


STEPS = ("t2i_train", "p2p_sd", "ddim_cifar10", "hw4", "inversion_sd", "ddim_table1")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gpu")
    ap.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "bench_gpu",
                    help="work folders of the runs and the random-weight models (not brought back)")
    ap.add_argument("--deadline", type=float, default=520, help="seconds for all steps together (the device call's limit is 600)")
    ap.add_argument("--only", nargs="+", choices=STEPS, help="these steps only (in the script's order)")
    ap.add_argument("--table1-samples", type=int, default=4096, help="samples per cell of Table 1")
    ap.add_argument("--smoke", action="store_true", help="on the CPU at the tests' sizes: a check of the script itself")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    run = Runner(args.out, args.scratch, args.deadline, args.smoke)
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    run.add("setup", "ok", f"torch {torch.__version__}, GPU {gpu}, {os.cpu_count()} CPU cores", "", "")
    if not args.smoke and gpu == "none":
        sys.exit("no CUDA device: run with --smoke for a CPU check")
    caps = step_caps(args.smoke)
    fns = {"t2i_train": t2i_train, "p2p_sd": p2p_sd, "ddim_cifar10": ddim_cifar10, "hw4": hw4,
           "inversion_sd": inversion_sd, "ddim_table1": lambda r, b: ddim_table1(r, b, args.table1_samples)}
    for name in STEPS:
        if args.only is None or name in args.only:
            run.step(name, caps[name], lambda b, f=fns[name]: f(run, b))
    run.tar("bench.tar", run.scratch, ["*.csv"])
    run.log.close()
    print((args.out / "gpu.csv").read_text())


if __name__ == "__main__":
    main()
