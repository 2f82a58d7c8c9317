"""Benchmark: time per cell of the DDIM quality table (the paper's Table 1), stacked against separate.

Rule ``ddim_quality_samples`` draws every variant of one step count S (eta values, sigma-hat) with one
UNet call per step on the variants' x_t stacked into one batch (``samplers.sample_variants``). Per S
this measures, interleaved, the median wall time of

* ``stacked``: one ``sample_variants`` call with all variants (what the rule runs);
* ``separate``: one ``sample_variants`` call per variant, one after the other;

and prints the time per cell (variant x S) of each and the ratio separate / stacked. The samples of
both are checked equal (within 1e-4) before timing. Writes bench/out/ddim_quality.csv.

    .venv/bin/python bench/bench_ddim_quality.py                           # default recipe's UNet, random weights
    .venv/bin/python bench/bench_ddim_quality.py --model results/ddim/model --steps 10 50 100
"""

from __future__ import annotations

import argparse

import torch
from _common import side_by_side, write_rows

from diffusion_report.core import samplers
from diffusion_report.core.schedules import Schedule
from diffusion_report.models import ddpm
from diffusion_report.models.loading import autocast
from diffusion_report.stages import ddim as ddim_stage
from diffusion_report.stages.ddim_cells import quality_variants

SEED = 0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model folder or hub id (default: the default recipe's UNet, random weights)")
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--etas", type=float, nargs="+", default=[0.2, 0.5, 1.0])
    ap.add_argument("--num-samples", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=["float32", "bfloat16"], default="float32",
                    help="the UNet's arithmetic (ddim.precision; bfloat16 under autocast)")
    ap.add_argument("--out", help="CSV path (default bench/out/ddim_quality.csv)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if args.model:
        unet, schedule, _ = ddpm.load_model(args.model, dev)
    else:
        unet = ddpm.build_unet(ddpm.unet_config(16, [32, 64, 64]), SEED).to(dev).eval()
        schedule = Schedule.make("linear", 1000)
    x_T = ddim_stage.make_x_T((args.num_samples, *ddpm.image_shape(unet)), SEED).to(dev)
    variants = quality_variants(args.etas, True)

    def gens(shared: bool = True):  # the rule's noise: every variant on the stage's one Brownian path; stacked,
        if not shared:              # the variants share its draws, one after the other each needs a path of its own
            return {v: ddim_stage.noise_path(SEED, schedule.T, x_T.shape) for v in variants}
        path = ddim_stage.noise_path(SEED, schedule.T, x_T.shape)
        return {v: path for v in variants}

    rows = []
    for S in args.steps:
        def stacked():
            with autocast(dev, args.precision):
                return samplers.sample_variants(unet, x_T, schedule, S, variants, noise=gens())

        def separate():
            g = gens(shared=False)
            with autocast(dev, args.precision):
                return {v: samplers.sample_variants(unet, x_T, schedule, S, [v], noise={v: g[v]})[v] for v in variants}

        a, b = stacked(), separate()
        worst = max(float((a[v] - b[v]).abs().max()) for v in variants)
        if worst > 1e-4:
            raise SystemExit(f"S = {S}: stacked and separate samples differ by {worst:.2e}")
        t = side_by_side({"stacked": stacked, "separate": separate}, repeats=args.repeats)
        row = {"steps": S, "variants": len(variants), "num_samples": args.num_samples, "device": str(dev),
               "threads": args.threads, "precision": args.precision, "stacked_s_per_cell": t["stacked"] / len(variants),
               "separate_s_per_cell": t["separate"] / len(variants), "separate_over_stacked": t["separate"] / t["stacked"],
               "max_abs_diff": worst}
        rows.append(row)
        print(f"S = {S:5d}: {row['stacked_s_per_cell']:.3f} s per cell stacked, {row['separate_s_per_cell']:.3f} s separate "
              f"({row['separate_over_stacked']:.2f}x); outputs agree within {worst:.1e}")
    print(f"wrote {write_rows('ddim_quality', rows, args.out)}")


if __name__ == "__main__":
    main()
