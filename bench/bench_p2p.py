"""Benchmark: prompt-to-prompt edit pairs against plain generation of the same two prompts.

Every variant samples the same two prompts in one batch (source, target) from the same x_T with
classifier-free guidance, the same steps and scheduler:

* ``plain``    no processor installed: diffusers' fused attention (SDPA) everywhere;
* ``store``    the attention store only (what a generation for the report records);
* ``replace``  a word swap (cross- and self-attention injection), as rule p2p_edit runs it;
* ``refine``   a refinement (aligned cross-attention injection);
* ``replace_explicit``  the same word swap computing explicit attention probabilities in every
  layer at every step, as the original notebook's controller does (its ``register_attention_control``
  replaces every attention forward); ours computes them only where the edit or the store needs them.

Prints the median wall time of each (measured interleaved) and its ratio to ``plain``; with
``--memory`` also the peak memory of each, measured in a fresh process per variant (GPU: peak
allocated; CPU: peak resident set above the loaded model, with glibc's allocator returning large
blocks to the system so that the resident set follows the live tensors). Goals (issue 10): edit /
plain <= 1.15 in time and <= 1.2 in peak memory. The edits inject self-attention as the pipeline
does (``--self-replace-steps``, default 0.8 as config.yaml's edits; ``--self-max-tokens``, default
``config``: ``p2p.self_max_tokens`` for the embedded model, 1/16 of the latent for Stable Diffusion;
``--self-replace-steps 0.4 --self-max-tokens none`` gives the settings of the runs before round 6).
Writes bench/out/p2p.csv.

    .venv/bin/python bench/bench_p2p.py --memory                 # the embedded model (models/t2i-shapes), 20 steps
    .venv/bin/python bench/bench_p2p.py --model CompVis/stable-diffusion-v1-4 --steps 50 --fp16 --memory
    .venv/bin/python bench/bench_p2p.py --random-sd --steps 50 --fp16   # SD v1.4's shapes, random weights, no download
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from _common import machine, peak_memory, rss_bytes, side_by_side, write_rows

from diffusion_report.core import attention
from diffusion_report.models.text2image import (
    encode_prompts,
    generate,
    initial_latents,
    load_text2image,
)

ROOT = Path(__file__).resolve().parents[1]

PAIRS = {  # (source, target) per edit mode and model kind
    "embedded": {"replace": ("a red circle on a white background", "a red square on a white background"),
                 "refine": ("a red circle on a white background", "a big red circle on a white background")},
    "sd": {"replace": ("a painting of a squirrel eating a burger", "a painting of a lion eating a burger"),
           "refine": ("a painting of a squirrel eating a burger", "a neoclassical painting of a squirrel eating a burger")},
}
VARIANTS = ("plain", "store", "replace", "refine", "replace_explicit")


class ExplicitEverywhere(attention.Replace):
    """The original's approach: explicit attention probabilities in every layer, at every step."""

    def needs_probs(self, is_cross: bool, n_query: int) -> bool:
        return True


def random_sd(device: str, fp16: bool, sample_size: int = 64):
    """Stable Diffusion v1.4's UNet, CLIP text encoder and VAE shapes with random weights (timing only)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffusion_report.models.loading import resolve_device
    from diffusion_report.models.text2image import Text2Image
    from diffusion_report.testing import tiny_tokenizer

    dev = resolve_device(device)
    dtype = torch.float16 if fp16 and dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(dev):  # initialised where they run: 1.1 B parameters take a minute to draw on a CPU
        unet = UNet2DConditionModel(sample_size=sample_size, cross_attention_dim=768, attention_head_dim=8)
        te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                          num_hidden_layers=12, max_position_embeddings=77))
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512)
    for m in (unet, te, vae):
        m.to(dev, dtype).eval().requires_grad_(False)
    return Text2Image(unet=unet, text_encoder=te, tokenizer=tiny_tokenizer(77), scheduler=sd_scheduler(), vae=vae, device=dev,
                      dtype=dtype)


def sd_scheduler():
    """The PNDM scheduler of Stable Diffusion v1.4's hub folder."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                         set_alpha_to_one=False, steps_offset=1)


def load(args):
    """(pipe, model name, prompt kind)."""
    if args.model:
        return load_text2image(args.model, config_key="--model", device=args.device, fp16=args.fp16), args.model, "sd"
    if args.random_sd:
        return random_sd(args.device, args.fp16, args.sample_size), f"random-sd-v1.4-shapes ({args.sample_size}x{args.sample_size} latents)", "sd"
    if args.tiny:
        from diffusion_report.testing import tiny_pipe

        return tiny_pipe(), "tiny test model", "embedded"
    where = ROOT / "models" / "t2i-shapes" / "model"
    return load_text2image(where, config_key="t2i.weights", device=args.device, fp16=args.fp16), "embedded (models/t2i-shapes)", "embedded"


def self_max_tokens(arg: str, kind: str) -> int | None:
    """``--self-max-tokens``: a number, ``none`` (the controller's default: 1/16 of the latent), or
    ``config`` (what the pipeline runs: ``p2p.self_max_tokens`` of config.yaml for the embedded
    model, the paper's default for Stable Diffusion, as presets/hw4.yaml)."""
    if arg == "config":
        return yaml.safe_load((ROOT / "config.yaml").read_text())["p2p"]["self_max_tokens"] if kind == "embedded" else None
    return None if arg == "none" else int(arg)


def variants(pipe, kind: str, steps: int, guidance: float, self_steps: float, self_tokens: int | None) -> dict:
    """name -> a function that samples the variant's prompt pair once and returns its controller
    (self-attention injected for ``self_steps`` of the steps at maps of at most ``self_tokens`` pixels)."""
    x_T = initial_latents(pipe, 8888, "bench")
    pairs = PAIRS[kind]
    max_len = pipe.max_length

    def run(mode: str, explicit: bool = False):
        prompts = list(pairs[mode])

        def fn():
            if explicit:
                ctrl = ExplicitEverywhere(prompts, pipe.tokenizer, steps, 0.8, self_steps, max_len, self_max_tokens=self_tokens)
            else:
                ctrl = attention.make_controller(mode, prompts, pipe.tokenizer, steps, 0.8, self_steps, max_len=max_len,
                                                 self_max_tokens=self_tokens)
            return generate(pipe, prompts, x_T, steps, guidance, ctrl)[1]

        return fn

    prompts = list(pairs["replace"])
    out = {
        "plain": lambda: generate(pipe, prompts, x_T, steps, guidance, plain=True)[1],
        "store": lambda: generate(pipe, prompts, x_T, steps, guidance)[1],
        "replace": run("replace"),
        "refine": run("refine"),
        "replace_explicit": run("replace", explicit=True),
    }
    for pr in pairs.values():  # the text embeddings are computed once per model in every variant
        encode_prompts(pipe, list(pr) + [""])
    return out


def memory_child(args) -> None:
    """Measure one variant's peak memory in this (fresh) process and print it as JSON."""
    pipe, _, kind = load(args)
    fn = variants(pipe, kind, args.steps, args.guidance, args.self_replace_steps, self_max_tokens(args.self_max_tokens, kind))[args.memory_of]
    fn()  # warm-up: one-time allocations (kernels, caches) are not the variant's working memory
    model_rss = rss_bytes()[0]
    peak = peak_memory(fn)
    if pipe.device.type == "cuda":
        total = torch.cuda.max_memory_allocated()
    else:
        total = model_rss + peak
    print(json.dumps({"peak_bytes": peak, "total_bytes": total}))


def memory_of(variant: str, argv: list[str]) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    out = subprocess.run([sys.executable, __file__, *argv, "--memory-of", variant], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="hub id or local folder of a Stable Diffusion-like model")
    ap.add_argument("--random-sd", action="store_true", help="Stable Diffusion v1.4's architecture with random weights")
    ap.add_argument("--sample-size", type=int, default=64, help="latent side for --random-sd (64: SD v1.4's 512x512 images)")
    ap.add_argument("--tiny", action="store_true", help="the tiny test model")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--self-replace-steps", type=float, default=0.8, help="share of steps with injected self-attention (as config.yaml's edits)")
    ap.add_argument("--self-max-tokens", default="config",
                    help="largest map (pixels) with injected self-attention: a number, none, or config (p2p.self_max_tokens for the embedded model)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory", action="store_true", help="also measure peak memory (one process per variant)")
    ap.add_argument("--memory-variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), help="the variants --memory measures")
    ap.add_argument("--memory-of", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--out", help="CSV path (default bench/out/p2p.csv)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_of:
        return memory_child(args)

    pipe, name, kind = load(args)
    self_tokens = self_max_tokens(args.self_max_tokens, kind)
    fns = variants(pipe, kind, args.steps, args.guidance, args.self_replace_steps, self_tokens)
    med = side_by_side(fns, args.repeats)
    counts = {}  # how many attention calls took the explicit route, and the fused one on the source's queries
    for v in VARIANTS[1:]:
        procs = fns[v]().processors.values()
        total = sum(p.explicit_calls + p.source_calls + p.sdpa_calls for p in procs)
        counts[v] = (f"{sum(p.explicit_calls for p in procs)}/{total}", f"{sum(p.source_calls for p in procs)}/{total}")
    mem = {}
    if args.memory:
        child_argv = [a for a in argv if a != "--memory"]
        if "--memory-variants" in child_argv:  # the child takes --memory-of instead
            i = child_argv.index("--memory-variants")
            del child_argv[i : i + 1 + len(args.memory_variants)]
        mem = {v: memory_of(v, child_argv) for v in dict.fromkeys(["plain", *args.memory_variants])}
    rows = []
    for v in VARIANTS:
        row = {"variant": v, "model": name, "device": str(pipe.device), "dtype": str(pipe.dtype).replace("torch.", ""),
               "steps": args.steps, "batch": 2, "repeats": args.repeats, "median_s": round(med[v], 4),
               "time_over_plain": round(med[v] / med["plain"], 3), "self_replace_steps": args.self_replace_steps,
               "self_max_tokens": "default" if self_tokens is None else self_tokens}
        row["explicit_attention_calls"], row["source_query_calls"] = counts.get(v, ("none", "none"))
        if v in mem:
            row["peak_mib"] = round(mem[v]["peak_bytes"] / 2**20, 1)
            row["peak_over_plain"] = round(mem[v]["peak_bytes"] / max(1, mem["plain"]["peak_bytes"]), 3)
            row["total_mib"] = round(mem[v]["total_bytes"] / 2**20, 1)
            row["total_over_plain"] = round(mem[v]["total_bytes"] / max(1, mem["plain"]["total_bytes"]), 3)
        rows.append(row)
    cols = list(rows[0])
    print(f"machine: {machine()}; model: {name}; {args.steps} steps, guidance {args.guidance}, batch 2; self-attention "
          f"injected for {args.self_replace_steps:g} of the steps at maps <= {self_tokens or 'the default'} pixels")
    print("  ".join(f"{c:>16}" for c in cols[0:1] + cols[7:]))
    for r in rows:
        print("  ".join(f"{str(r.get(c, '')):>16}" for c in cols[0:1] + cols[7:]))
    print(f"wrote {write_rows('p2p', rows, args.out)}")


if __name__ == "__main__":
    main()
