"""Rule t2i_eval's sampling: the stage as it runs against the ways it ran before.

Goal (issue 20): batching the prompt-to-prompt evaluation across seeds is >= 1.5x faster on the
stage, with the same table up to float rounding. Runs :func:`evaluate_edits` on the shipped
embedded model, interleaved, in three ways:

* ``loop``: one case at a time (``t2i.eval.batch_cases: 1``), the two methods in two batches
  (prompt-to-prompt's pair; the no-control pair), each sampling its own source: the stage before round 2;
* ``batched``: all seeds of an edit type in one batch (``ControllerBatch``), still two batches a
  method: rounds 2 to 9;
* ``shared``: all seeds in one batch of three rows a case (source, p2p target, no-control target),
  the source sampled once for both methods: the stage since round 10.

and compares the per-seed tables with the loop's: discrete columns must be equal (or the seeds that
differ are listed); the largest difference of the float columns is printed.
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

    def run(name, c, shared):
        tables[name] = t2i_stage.evaluate_edits(pipe, reader, c, seed, shared_source=shared)[0]

    med = side_by_side({"loop": lambda: run("loop", one, False), "batched": lambda: run("batched", every, False),
                        "shared": lambda: run("shared", every, True)}, args.repeats, warmup=0)
    a = tables["loop"]
    discrete = [c for c in a.columns if c not in FLOAT_COLUMNS]
    n_images = {"loop": 4, "batched": 4, "shared": 3}
    labels = {"loop": "one case at a time, two batches a case (batch_cases: 1; before round 2)",
              "batched": f"all {args.seeds} cases of an edit type at once, two batches (rounds 2-9)",
              "shared": f"all {args.seeds} cases at once, one batch, the source shared by both methods (round 10)"}
    rows = []
    for name in ("loop", "batched", "shared"):
        b = tables[name]
        changed = ~((a[discrete] == b[discrete]) | (a[discrete].isna() & b[discrete].isna())).all(axis=1)
        rows.append({"variant": labels[name], "seconds": round(med[name], 3),
                     "images_sampled": n_images[name] * args.seeds * len(args.edits),
                     "speedup": round(med["loop"] / med[name], 2),
                     "max_abs_diff": float((a[FLOAT_COLUMNS] - b[FLOAT_COLUMNS]).abs().max().max()),
                     "rows_with_a_discrete_change": int(changed.sum())})
        if changed.any():
            print(f"{name}: discrete columns differ from the loop's in\n{pd.concat([a[changed], b[changed]]).to_string()}")
    print(f"{machine()}; {args.seeds} seeds x {args.edits}, {cfg['eval']['num_steps']} steps, median of {args.repeats}")
    print(pd.DataFrame(rows).to_string(index=False))
    print(write_rows("t2i_eval", rows, args.out))


if __name__ == "__main__":
    main()
