"""Benchmark: training throughput of the digits DDPM (rule ddim_train) and the embedded
text-to-image model (rule t2i_train), in samples per second, at 1 and 2 threads.

For each model it times ``--steps`` optimiser steps of the real training function with the
default config's recipe, and, separately, drawing the same batches alone (digits: indexing the
preloaded tensor and drawing t, eps; shapes: rendering the captioned images on the fly and
dropping captions). ``data_share`` is that data time over the training time: it shows whether
Python-side data handling bounds the loop. Rules run with ``threads: 2`` (rules/ddim.smk,
rules/t2i.smk), which :func:`diffusion_report.io.run_rule` passes to ``torch.set_num_threads``.
Writes bench/out/train.csv.

    .venv/bin/python bench/bench_train.py [--steps 40] [--threads 1 2]
"""

from __future__ import annotations

import argparse
import logging

import torch
import yaml
from _common import ROOT, machine, timed, write_rows

from diffusion_report.core.schedules import Schedule
from diffusion_report.io import make_generator
from diffusion_report.models import ddpm, digits, t2i, training


def bench_digits(config: dict, steps: int) -> dict:
    tcfg = config["ddim"]["train"]
    seed, bs = int(config["seed"]), int(tcfg["batch_size"])
    schedule = Schedule.from_config(config["schedule"])
    x, _ = digits.digits_split(int(tcfg["image_size"]), seed)["ddpm"]
    cfg = ddpm.unet_config(int(tcfg["image_size"]), tcfg["channels"])

    def train():
        training.train_ddpm(x, schedule, cfg, steps=steps, batch_size=bs, learning_rate=float(tcfg["learning_rate"]),
                            ema_decay=float(tcfg["ema_decay"]), seed=seed, log_every=0)

    def data():
        gb, gn = make_generator(seed, "b"), make_generator(seed, "n")
        for _ in range(steps):
            batch = x[torch.randint(0, x.shape[0], (bs,), generator=gb)]
            torch.randint(1, schedule.T + 1, (bs,), generator=gn)
            torch.randn(batch.shape, generator=gn)

    train()  # warm-up
    return {"model": "digits DDPM (ddim_train)", "batch": bs, "train_s": timed(train), "data_s": timed(data)}


def bench_t2i(config: dict, steps: int) -> dict:
    cfg = t2i.block_config(config["t2i"], int(config["seed"]))
    cfg["training"] = dict(cfg["training"], stop_after=None)
    tc = cfg["training"]
    bs = int(tc["batch_size"])
    model = t2i.build_model(cfg)

    def train():
        t2i.train(cfg, steps=steps, model=model, log_every=0)

    def data():
        gen = make_generator(0, "bench")
        for _ in range(steps):
            t2i.training_batch(model.spec, bs, float(tc["caption_dropout"]), gen)

    train()  # warm-up
    return {"model": "embedded text-to-image (t2i_train)", "batch": bs, "train_s": timed(train), "data_s": timed(data)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", help="CSV path (default bench/out/train.csv)")
    args = ap.parse_args(argv)
    logging.disable(logging.INFO)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for fn in (bench_digits, bench_t2i):
            r = fn(config, args.steps)
            r.update(threads=threads, steps=args.steps, samples_per_s=round(args.steps * r["batch"] / r["train_s"], 1),
                     data_share=round(r["data_s"] / r["train_s"], 4))
            r["train_s"], r["data_s"] = round(r["train_s"], 3), round(r["data_s"], 4)
            rows.append(r)
            print(f"{r['model']:<38} {threads} threads: {r['samples_per_s']:8.1f} samples/s "
                  f"({r['steps']} steps of {r['batch']} in {r['train_s']:.2f} s; data alone {r['data_s']:.3f} s = "
                  f"{100 * r['data_share']:.1f}%)", flush=True)
    for model in dict.fromkeys(r["model"] for r in rows):
        by = {r["threads"]: r["samples_per_s"] for r in rows if r["model"] == model}
        if 1 in by and 2 in by:
            print(f"{model}: 2 threads / 1 thread = {by[2] / by[1]:.2f}x")
    print(f"machine: {machine()}")
    print(f"wrote {write_rows('train', rows, args.out)}")


if __name__ == "__main__":
    main()
