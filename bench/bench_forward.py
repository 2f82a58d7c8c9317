"""Forward stage: the vectorised MSE table against a per-timestep Python loop, same noise draws.

Goal (issue 10): vectorised >= 10x faster than the loop; 5 images at 128x128, t = 0..1000 in <= 2 s
on 2 cores. Prints the ratio measured side by side in this run and writes bench/out/forward.csv.
Usage: .venv/bin/python bench/bench_forward.py [--repeats 3]
"""

from __future__ import annotations

import argparse

import torch
from _common import machine, median_time, write_rows

from diffusion_report import forward
from diffusion_report.images import load_images
from diffusion_report.schedules import Schedule


def loop_mse(x0, t_max, schedule, seed):
    """The obvious implementation: one q_sample and one MSE per timestep."""
    out = torch.empty(t_max + 1, x0.shape[0], dtype=torch.float64)
    for t in range(t_max + 1):
        xt = forward.q_sample(x0, t, forward.timestep_noise(tuple(x0.shape), t, seed), schedule)
        out[t] = (xt - x0).pow(2).flatten(1).mean(1).double()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--t-max", type=int, default=1000)
    args = ap.parse_args()
    schedule = Schedule.make("linear", 1000)
    x0 = load_images(["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left"], 128)
    a = forward.mse_per_timestep(x0, args.t_max, schedule, 0)
    b = loop_mse(x0, args.t_max, schedule, 0)
    assert torch.allclose(a, b, rtol=1e-5), "vectorised and loop results differ"
    t_vec = median_time(lambda: forward.mse_per_timestep(x0, args.t_max, schedule, 0), args.repeats)
    t_loop = median_time(lambda: loop_mse(x0, args.t_max, schedule, 0), args.repeats)
    g = torch.Generator().manual_seed(0)
    t_rng = median_time(lambda: [torch.randn(tuple(x0.shape), generator=g) for _ in range(args.t_max + 1)], args.repeats)
    rows = [
        {"what": "vectorised mse_per_timestep", "seconds": round(t_vec, 4), "ratio_vs_loop": round(t_loop / t_vec, 2)},
        {"what": "per-timestep loop", "seconds": round(t_loop, 4), "ratio_vs_loop": 1.0},
        {"what": "noise draws alone (floor)", "seconds": round(t_rng, 4), "ratio_vs_loop": round(t_loop / t_rng, 2)},
    ]
    print(f"machine: {machine()}")
    print(f"5 images at 128x128, t = 0..{args.t_max}, median of {args.repeats}")
    for r in rows:
        print(f"  {r['what']:<32} {r['seconds']:8.3f} s   loop/this = {r['ratio_vs_loop']}")
    print(f"vectorised / floor = {t_vec / t_rng:.2f}")
    print(f"wrote {write_rows('forward', rows)}")


if __name__ == "__main__":
    main()
