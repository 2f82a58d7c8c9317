"""Test support: the tiny models that tests and benchmarks build in code (the way diffusers' own
tests do: no hub, no download), shared from one place.

* :func:`tiny_tokenizer` / :func:`tiny_pipe`: a CLIP-tokenizer + CLIPTextModel + UNet2DConditionModel
  text-to-image bundle (pixel space, or latent with a one-block VAE) with the layout of Stable
  Diffusion v1, small enough for a CPU test.
* :func:`tiny_unet_config`: an unconditional UNet2DModel with one attention block (DDPM/DDIM tests).
* :func:`copy_workflow`, :func:`run_snakemake`, :func:`job_stats`: run the workflow in a scratch copy.

Not used by the workflow's rules. Imports torch and diffusers only in the functions that need them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffusion_report.models.text2image import Text2Image

ROOT = Path(__file__).resolve().parents[2]  # the workflow's checkout (the package is installed editable)
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
WORKFLOW_FILES = ("Snakefile", "config.yaml", "rules", "scripts", "schemas", "report", "envs", "profiles", "presets", "models")

WORDS = ["a", "photo", "of", "house", "on", "mountain", "at", "winter", "painting", "lion", "eating", "burger",
         "red", "blue", "circle", "square", "white", "background", "cat", "dog"]  # "squirrel" is left out: 5 tokens
MAX_LEN = 16


def tiny_tokenizer(max_len: int = MAX_LEN):
    """A CLIP BPE tokenizer whose merges spell out WORDS; other words split into several tokens."""
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz.,!?'":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = []
    for w in WORDS:
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        cur = parts[0]
        for p in parts[1:]:
            merges.append((cur, p))
            cur += p
            vocab.setdefault(cur, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)), model_max_length=max_len)


def tiny_pipe(pixel: bool = True, seed: int = 0, max_len: int = MAX_LEN) -> Text2Image:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffusion_report.models.text2image import Text2Image

    torch.manual_seed(seed)  # weight init of the tiny test models only
    tok = tiny_tokenizer(max_len)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                      num_hidden_layers=2, max_position_embeddings=max_len, bos_token_id=0, eos_token_id=1,
                                      pad_token_id=1)).eval()
    ch = 3 if pixel else 4
    unet = UNet2DConditionModel(sample_size=16, in_channels=ch, out_channels=ch, block_out_channels=(32, 64), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8).eval()
    vae = None
    if not pixel:
        vae = AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                            up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8).eval()
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False, set_alpha_to_one=False)
    return Text2Image(unet=unet, text_encoder=te, tokenizer=tok, scheduler=sched, vae=vae)


def tiny_unet_config() -> dict:
    return {
        "sample_size": 8,
        "in_channels": 1,
        "out_channels": 1,
        "layers_per_block": 1,
        "block_out_channels": (8, 16),
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "UpBlock2D"),
        "norm_num_groups": 4,
        "attention_head_dim": 8,
    }


# ------------------------------------------------------------------ the workflow in a scratch copy
def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow (no results, no .snakemake) in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


# How the tests run the workflow. Their runs are of the tiny preset, whose jobs are mostly start-up
# (a few seconds each): one thread per job lets two jobs run side by side on 2 cores (a whole tiny
# run took 87 s instead of 131 s). A thread count changes float rounding, so every run that a test
# compares byte for byte with another uses these arguments; benchmarks pass their own.
TEST_RUN_ARGS = ("--cores", "2", "--max-threads", "1")


def run_snakemake(workdir: Path, *args: str, timeout: int = 900, env: dict | None = None,
                  run_args: tuple[str, ...] = TEST_RUN_ARGS) -> subprocess.CompletedProcess:
    """Run snakemake in ``workdir`` with ``run_args`` then ``args``; return the finished process
    (stdout and stderr captured)."""
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONHASHSEED="0")
    full_env.update(env or {})
    return subprocess.run(
        [SNAKEMAKE, *run_args, *args],
        cwd=workdir, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def job_stats(out: str) -> dict[str, int]:
    """rule -> job count from the "Job stats" table Snakemake prints ({} when nothing is to be done)."""
    if "Job stats:" not in out:
        return {}
    jobs = {}
    for line in out[out.index("Job stats:"):].split("\n\n")[0].splitlines()[3:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            jobs[parts[0]] = int(parts[1])
    return jobs
