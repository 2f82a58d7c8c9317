"""Benchmark: the cost of editing a given image, per image, one at a time against one batch.

For ``--images`` N images (drawn by the captioned-shapes generator for the embedded model; random
pixels for ``--random-sd``), each under its own prompt, measured side by side (interleaved):

* ``one_at_a_time``  DDIM inversion, then null-text inversion, of each image alone (what rule
  p2p_real_edit does per configured image), N calls;
* ``batched``        the N images in one call (``null_text_invert(per_image=True)``: one null
  embedding per image, what rule p2p_real_eval does per edit type);
* ``ddim_only``      DDIM inversion of the N images in one batch (the part without optimisation).

Prints the median wall time of each, the time per image and the batched speed-up (one_at_a_time /
batched), and exits non-zero when the batched reconstructions differ from the one-at-a-time ones
by more than rounding. Writes bench/out/inversion.csv.

    .venv/bin/python bench/bench_inversion.py                      # the embedded model, 24 images, 20 steps
    .venv/bin/python bench/bench_inversion.py --random-sd --device cuda --images 4 --steps 50 --guidance 7.5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from _common import machine, side_by_side, write_rows

ROOT = Path(__file__).resolve().parents[1]
MAX_DIFF, MAX_MEAN_DIFF = 0.1, 2e-3  # rounding, not a different inversion (see main)
NULL_TEXT = {"inner_steps": 10, "learning_rate": 0.1, "early_stop": 1e-5}  # config.yaml's p2p.real_eval.null_text


def load(args):
    """(pipe, model name, images (N, 3, H, W) in [-1, 1], prompts)."""
    if args.random_sd:
        from bench_p2p import random_sd

        pipe = random_sd(args.device, args.fp16, args.sample_size)
        g = torch.Generator().manual_seed(0)
        images = torch.rand(args.images, 3, pipe.image_size, pipe.image_size, generator=g) * 2 - 1
        return pipe, f"random-sd-v1.4-shapes ({args.sample_size}x{args.sample_size} latents)", images, ["a photo of a cat"] * args.images
    import yaml

    from diffusion_report.models import shapes
    from diffusion_report.models.text2image import load_text2image
    from diffusion_report.stages.t2i import drawn_cases

    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    pipe = load_text2image(ROOT / "models" / "t2i-shapes" / "model", config_key="t2i.weights", device=args.device)
    cases, images = drawn_cases(shapes.ShapeSpec.from_config(cfg["t2i"]["data"]), "colour_swap", args.images, cfg["seed"])
    return pipe, "embedded (models/t2i-shapes)", images, [c.source for c in cases]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--random-sd", action="store_true", help="Stable Diffusion v1.4's architecture with random weights")
    ap.add_argument("--sample-size", type=int, default=64, help="latent side for --random-sd")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", help="CSV path (default bench/out/inversion.csv)")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)

    from diffusion_report.stages.p2p import invert_batch

    pipe, name, images, prompts = load(args)
    n = len(prompts)

    results = {}

    def one_at_a_time():
        results["one"] = torch.cat([invert_batch(pipe, images[i: i + 1], prompts[i: i + 1], args.steps, args.guidance, NULL_TEXT)["rec_null"]
                                    for i in range(n)])

    def batched():
        results["batched"] = invert_batch(pipe, images, prompts, args.steps, args.guidance, NULL_TEXT)["rec_null"]

    def ddim_only():
        invert_batch(pipe, images, prompts, args.steps, args.guidance, dict(NULL_TEXT, inner_steps=0))

    med = side_by_side({"one_at_a_time": one_at_a_time, "batched": batched, "ddim_only": ddim_only}, args.repeats, warmup=0)
    # the batch must give each image what its own inversion gives. Adam's near-sign steps round differently in a
    # batch, and 20 steps x 10 Adam steps compound it: a few pixels move by up to ~0.04 (5 grey levels), the mean
    # stays ~1e-4. An image given another image's null embeddings moves by ~0.5, its mean by ~0.05.
    d = (results["one"] - results["batched"]).abs()
    diff, mean_diff = float(d.max()), float(d.mean())
    rows = [{"variant": k, "model": name, "device": str(pipe.device), "images": n, "steps": args.steps, "guidance": args.guidance,
             "repeats": args.repeats, "median_s": round(v, 3), "s_per_image": round(v / n, 4),
             "speedup_vs_one_at_a_time": round(med["one_at_a_time"] / v, 2), "max_abs_diff_batched": diff, "mean_abs_diff_batched": mean_diff} for k, v in med.items()]
    print(f"machine: {machine()}; model: {name}; {n} images, {args.steps} steps, guidance {args.guidance}, "
          f"null-text {NULL_TEXT['inner_steps']} Adam steps per timestep at most")
    for r in rows:
        print(f"{r['variant']:>14}  {r['median_s']:>9.3f} s  {r['s_per_image']:>8.4f} s/image  x{r['speedup_vs_one_at_a_time']}")
    print(f"null-text reconstructions, batched against one at a time: |difference| max {diff:.2e}, mean {mean_diff:.2e} (images in [-1, 1])")
    print(f"wrote {write_rows('inversion', rows, args.out)}")
    if diff > MAX_DIFF or mean_diff > MAX_MEAN_DIFF:
        sys.exit(f"the batched inversion differs from the one-at-a-time one: max {diff:.2e} (limit {MAX_DIFF}), "
                 f"mean {mean_diff:.2e} (limit {MAX_MEAN_DIFF})")


if __name__ == "__main__":
    main()
