"""Benchmark: a prompt-to-prompt edit pair against plain sampling of the same two prompts.

Both sample the same two prompts in one batch from the same x_T with classifier-free guidance;
``plain`` installs no processor (diffusers' fused attention everywhere), ``store`` records the
attention maps only, ``edit`` is a word swap with cross/self-attention injection. Prints and
writes the median wall time of each over the repeats and its ratio to ``plain`` (measured side by
side in one run).

    .venv/bin/python bench/bench_p2p.py                        # tiny SD-shaped model built in code
    .venv/bin/python bench/bench_p2p.py --model CompVis/stable-diffusion-v1-4 --steps 50 --device cuda
    .venv/bin/python bench/bench_p2p.py --random-sd --steps 50 --fp16    # SD v1.4's shapes, random weights, no download
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts"), str(ROOT / "tests")]

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from diffusion_report import p2p  # noqa: E402
from diffusion_report.io import write_csv  # noqa: E402
from diffusion_report.text2image import generate, initial_latents, load_text2image  # noqa: E402

SOURCE, TARGET = "a painting of a squirrel eating a burger", "a painting of a lion eating a burger"


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def random_sd(device: str, fp16: bool):
    """Stable Diffusion v1.4's UNet, CLIP text encoder and VAE shapes with random weights (timing only)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffusion_report.models import resolve_device
    from diffusion_report.text2image import Text2Image
    from test_p2p import tiny_tokenizer

    dev = resolve_device(device)
    dtype = torch.float16 if fp16 and dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                      num_hidden_layers=12, max_position_embeddings=77))
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512)
    for m in (unet, te, vae):
        m.to(dev, dtype).eval().requires_grad_(False)
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                          set_alpha_to_one=False, steps_offset=1)
    return Text2Image(unet=unet, text_encoder=te, tokenizer=tiny_tokenizer(77), scheduler=sched, vae=vae, device=dev, dtype=dtype)


def main(argv=None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="hub id or local folder; default: the tiny test model")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--fp16", action="store_true")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--random-sd", action="store_true", help="Stable Diffusion v1.4's architecture with random weights")
    ap.add_argument("--out", default="results/bench/p2p.csv")
    args = ap.parse_args(argv)
    if args.model:
        pipe = load_text2image(args.model, config_key="--model", device=args.device, fp16=args.fp16)
    elif args.random_sd:
        pipe = random_sd(args.device, args.fp16)
    else:
        from test_p2p import tiny_pipe

        pipe = tiny_pipe()
    prompts = [SOURCE, TARGET]
    x_T = initial_latents(pipe, 8888, "bench")

    def edit():
        ctrl = p2p.make_controller("replace", prompts, pipe.tokenizer, args.steps, 0.8, 0.4, max_len=pipe.max_length)
        generate(pipe, prompts, x_T, args.steps, args.guidance, ctrl)

    variants = {
        "plain": lambda: generate(pipe, prompts, x_T, args.steps, args.guidance, plain=True),
        "store": lambda: generate(pipe, prompts, x_T, args.steps, args.guidance),
        "edit": edit,
    }
    for fn in variants.values():  # warm-up
        fn()
    times = {k: [] for k in variants}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every variant alike
        for k, fn in variants.items():
            times[k].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    name = args.model or ("random-sd-v1.4-shapes" if args.random_sd else "tiny")
    df = pd.DataFrame([{"variant": k, "model": name, "dtype": str(pipe.dtype).replace("torch.", ""), "device": str(pipe.device), "steps": args.steps,
                        "repeats": args.repeats, "median_s": med[k], "ratio_to_plain": med[k] / med["plain"]} for k in variants])
    print(df.to_string(index=False))
    write_csv(args.out, df)
    return df


if __name__ == "__main__":
    main()
