"""Rule t2i_eval's sampling: the cases of one edit type in one batch against one case at a time.

Goal (issue 20): batching the prompt-to-prompt evaluation across seeds (one controller per case,
side by side in a :class:`ControllerBatch`) is >= 1.5x faster on the stage, with the same table up
to float rounding. Runs :func:`evaluate_edits` on the shipped embedded model with
``t2i.eval.batch_cases`` = 1 (the loop) and = all seeds, interleaved, and compares the per-seed
tables: discrete columns must be equal; the largest difference of the float columns is printed.
Writes bench/out/t2i_eval.csv.
Usage: .venv/bin/python bench/bench_t2i_eval.py [--seeds 24] [--edits shape_swap refine_big] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy

import pandas as pd
import torch
import yaml
from _common import ROOT, machine, side_by_side, write_rows

from diffusion_report.models.text2image import load_text2image
from diffusion_report.stages import t2i as t2i_stage

FLOAT_COLUMNS = ["untouched_kept", "mask_iou", "centroid_shift_px", "radius_change_px", "pixel_mae"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=24)
    ap.add_argument("--steps", type=int, help="DDIM steps (default: the config's t2i.eval.num_steps)")
    ap.add_argument("--edits", nargs="+", default=["shape_swap", "refine_big"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="CSV path (default bench/out/t2i_eval.csv)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg = copy.deepcopy(config["t2i"])
    cfg["eval"].update(seeds=args.seeds, edits=args.edits, **({"num_steps": args.steps} if args.steps else {}))
    seed = int(config["seed"])
    pipe = load_text2image(ROOT / "models" / "t2i-shapes" / "model", config_key="t2i.weights", device="cpu", scheduler="ddim")
    reader = t2i_stage.fit_reader(cfg, seed)
    one = copy.deepcopy(cfg)
    one["eval"]["batch_cases"] = 1
    every = copy.deepcopy(cfg)
    every["eval"]["batch_cases"] = None
    tables = {}

    def run(name, c):
        tables[name] = t2i_stage.evaluate_edits(pipe, reader, c, seed)[0]

    med = side_by_side({"loop": lambda: run("loop", one), "batched": lambda: run("batched", every)}, args.repeats, warmup=0)
    a, b = tables["loop"], tables["batched"]
    discrete = [c for c in a.columns if c not in FLOAT_COLUMNS]
    assert a[discrete].equals(b[discrete]), "batching changed a discrete result (success, kept, source ok)"
    diff = float((a[FLOAT_COLUMNS] - b[FLOAT_COLUMNS]).abs().max().max())
    n_images = 4 * args.seeds * len(args.edits)  # (source, target) x (p2p, no control) per case
    rows = [
        {"variant": "one case at a time (batch_cases: 1)", "seconds": round(med["loop"], 3),
         "s_per_image": round(med["loop"] / n_images, 4), "speedup": 1.0, "max_abs_diff": 0.0},
        {"variant": f"all {args.seeds} cases of an edit type at once", "seconds": round(med["batched"], 3),
         "s_per_image": round(med["batched"] / n_images, 4), "speedup": round(med["loop"] / med["batched"], 2),
         "max_abs_diff": diff},
    ]
    print(f"{machine()}; {args.seeds} seeds x {args.edits}, {cfg['eval']['num_steps']} steps, median of {args.repeats}")
    print(pd.DataFrame(rows).to_string(index=False))
    print(write_rows("t2i_eval", rows, args.out))


if __name__ == "__main__":
    main()
