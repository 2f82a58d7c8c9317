"""Forward stage: the vectorised MSE table against a per-timestep Python loop, same noise draws.

Goal (issue 10): vectorised >= 10x faster than the loop; 5 images at 128x128, t = 0..1000 in <= 2 s
on 2 cores. Both draw the same 1001 x 5 x 3 x 128 x 128 normals (one generator per timestep, shared
with the noisy-image grid), and drawing them is most of the loop's time, so the ratio is bounded by
loop / draws; the third row is that floor. Prints the times measured interleaved in this run and
writes bench/out/forward.csv.
Usage: .venv/bin/python bench/bench_forward.py [--repeats 5]
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

import torch
from _common import machine, side_by_side, write_rows

from diffusion_report.core import forward
from diffusion_report.core.schedules import Schedule
from diffusion_report.images import load_images


def loop_mse(x0, t_max, schedule, seed):
    """The obvious implementation: one q_sample and one MSE per timestep."""
    out = torch.empty(t_max + 1, x0.shape[0], dtype=torch.float64)
    for t in range(t_max + 1):
        xt = forward.q_sample(x0, t, forward.timestep_noise(tuple(x0.shape), t, seed), schedule)
        out[t] = (xt - x0).pow(2).flatten(1).mean(1).double()
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--t-max", type=int, default=1000)
    ap.add_argument("--out", help="CSV path (default bench/out/forward.csv)")
    args = ap.parse_args(argv)
    schedule = Schedule.make("linear", 1000)
    x0 = load_images(["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left"], 128)
    a = forward.mse_per_timestep(x0, args.t_max, schedule, 0)
    b = loop_mse(x0, args.t_max, schedule, 0)
    assert torch.allclose(a, b, rtol=1e-6), "vectorised and loop results differ"
    shape = tuple(x0.shape)

    def draws_alone():  # the same draws on the same threads, with nothing computed from them
        with ThreadPoolExecutor(torch.get_num_threads()) as pool:
            list(pool.map(lambda t: forward.timestep_noise(shape, t, 0), range(args.t_max + 1)))

    med = side_by_side({
        "vec": lambda: forward.mse_per_timestep(x0, args.t_max, schedule, 0),
        "loop": lambda: loop_mse(x0, args.t_max, schedule, 0),
        "rng": draws_alone,
    }, args.repeats)
    t_vec, t_loop, t_rng = med["vec"], med["loop"], med["rng"]
    rows = [
        {"what": "vectorised mse_per_timestep", "seconds": round(t_vec, 4), "ratio_vs_loop": round(t_loop / t_vec, 2)},
        {"what": "per-timestep loop", "seconds": round(t_loop, 4), "ratio_vs_loop": 1.0},
        {"what": "noise draws alone, threaded (floor)", "seconds": round(t_rng, 4), "ratio_vs_loop": round(t_loop / t_rng, 2)},
    ]
    print(f"machine: {machine()}")
    print(f"5 images at 128x128, t = 0..{args.t_max}, median of {args.repeats}")
    for r in rows:
        print(f"  {r['what']:<36} {r['seconds']:8.3f} s   loop/this = {r['ratio_vs_loop']}")
    print(f"vectorised / floor = {t_vec / t_rng:.2f}")
    print(f"wrote {write_rows('forward', rows, args.out)}")


if __name__ == "__main__":
    main()
