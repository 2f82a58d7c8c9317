"""Benchmark: our DDIM sampler against diffusers' DDIMScheduler loop, same UNet and x_T.

Prints, per step count, the median wall time of (a) ``diffusion_report.ddim.ddim_sample``,
(b) the loop DDIMPipeline runs (``DDIMScheduler.set_timesteps`` + ``step``; the pipeline itself
cannot take a given x_T), and (c) steps x one UNet forward, with the ratios a/b and a/c, and
writes them to a CSV. Run: ``.venv/bin/python bench/bench_ddim.py [--out bench/out/ddim.csv]``.
"""

from __future__ import annotations

import argparse
import sys

import torch

from _common import median_time  # noqa: E402  (puts scripts/ on sys.path)

from diffusion_report import ddim, training  # noqa: E402
from diffusion_report.schedules import Schedule  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--num-samples", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--channels", type=int, nargs="+", default=[32, 64, 64])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/out/ddim.csv")
    args = ap.parse_args(argv)

    import pandas as pd
    from diffusers import DDIMScheduler

    from diffusion_report.io import write_csv

    torch.set_num_threads(args.threads)
    unet = training.build_unet(training.unet_config(args.image_size, args.channels), seed=0).eval()
    sched = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    schedule = Schedule.from_betas(sched.betas.double())
    x_T = ddim.make_x_T((args.num_samples, 1, args.image_size, args.image_size), seed=0)
    k = torch.full((args.num_samples,), 500)

    def diffusers_loop(steps):
        sched.set_timesteps(steps)
        x = x_T
        with torch.no_grad():
            for t in sched.timesteps:
                x = sched.step(unet(x, t).sample, t, x).prev_sample
        return x

    with torch.no_grad():
        fwd = median_time(lambda: unet(x_T, k), max(5, args.repeats))
    rows = []
    for s in args.steps:
        ours = median_time(lambda: ddim.ddim_sample(unet, x_T, schedule, s), args.repeats)
        theirs = median_time(lambda: diffusers_loop(s), args.repeats)
        rows.append({"steps": s, "ours_s": ours, "diffusers_s": theirs, "unet_forwards_s": s * fwd,
                     "ours_over_diffusers": ours / theirs, "ours_over_forwards": ours / (s * fwd)})
        print(f"{s:5d} steps: ours {ours:.3f} s, diffusers {theirs:.3f} s, {s} forwards {s * fwd:.3f} s; "
              f"ours/diffusers {ours / theirs:.3f}, ours/forwards {ours / (s * fwd):.3f}", flush=True)
    write_csv(args.out, pd.DataFrame(rows))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
