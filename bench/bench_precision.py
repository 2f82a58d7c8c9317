"""Benchmark: DDIM sampling with the UNet in float32 against bfloat16 (``ddim.precision``).

Per step count, the median wall time (measured interleaved) of the stage's sampler
(``samplers.ddim_sample`` from the stage's x_T, what rule ``ddim_sample`` runs) with

* ``float32``: the UNet in float32;
* ``bfloat16``: the same call inside ``models.loading.autocast(device, "bfloat16")`` (what
  ``ddim.precision: auto`` resolves to where :func:`~diffusion_report.models.loading.native_bf16`
  holds);

the ratio float32 / bfloat16, and how far the bf16 samples are from float32's (max and mean |difference|
on the [0, 1] image scale). Writes bench/out/precision.csv. Whether bf16 keeps the sample quality
is the report's to say (the DDIM section's goals are measured on the run's own samples).

    .venv/bin/python bench/bench_precision.py --model models/ddim-digits/model    # the shipped digits DDPM
    .venv/bin/python bench/bench_precision.py --arch cifar10 --steps 2 --num-samples 4  # ddpm-cifar10-32's shapes
"""

from __future__ import annotations

import argparse

import torch
from _common import side_by_side, write_rows
from bench_ddim import cifar10_unet

from diffusion_report.core import samplers
from diffusion_report.core.schedules import Schedule
from diffusion_report.models import ddpm
from diffusion_report.models.loading import autocast, native_bf16
from diffusion_report.stages import ddim as ddim_stage

SEED = 0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=["digits", "cifar10"], default="digits", help="UNet shapes built in code (random weights)")
    ap.add_argument("--model", help="a model folder or hub id instead (loaded as rule ddim_sample does)")
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", help="CSV path (default bench/out/precision.csv)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if args.model:
        unet, schedule, prediction_type = ddpm.load_model(args.model, dev)
        name = args.model
    else:
        unet = (cifar10_unet() if args.arch == "cifar10" else ddpm.build_unet(ddpm.unet_config(16, [32, 64, 64]), seed=0))
        unet, name, prediction_type = unet.to(dev).eval(), f"{args.arch} UNet, random weights", "epsilon"
        schedule = Schedule.make("linear", 1000)
    x_T = ddim_stage.make_x_T((args.num_samples, *ddpm.image_shape(unet)), SEED).to(dev)
    print(f"{name}: {args.num_samples} samples, {args.threads} threads, {dev}; native bf16: {native_bf16(dev)}")

    def run(precision: str, S: int) -> torch.Tensor:
        with autocast(dev, precision):
            return samplers.ddim_sample(unet, x_T, schedule, S, prediction_type=prediction_type)

    rows = []
    for S in args.steps:
        x32, x16 = run("float32", S), run("bfloat16", S)
        diff = ((x16 - x32) / 2).abs()  # [-1, 1] -> [0, 1] scale
        t = side_by_side({p: (lambda p=p: run(p, S)) for p in ("float32", "bfloat16")}, repeats=args.repeats)
        rows.append({"model": name, "steps": S, "num_samples": args.num_samples, "native_bf16": native_bf16(dev),
                     "float32_s": t["float32"], "bfloat16_s": t["bfloat16"], "speedup": t["float32"] / t["bfloat16"],
                     "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())})
        r = rows[-1]
        print(f"S = {S:4d}: float32 {r['float32_s']:.3f} s, bfloat16 {r['bfloat16_s']:.3f} s ({r['speedup']:.2f}x); "
              f"|bf16 - fp32| on [0, 1]: max {r['max_abs_diff']:.3g}, mean {r['mean_abs_diff']:.3g}")
    print("wrote", write_rows("precision", rows, args.out))


if __name__ == "__main__":
    main()
