"""Random-weight stand-ins for the homework's pretrained models, written as local folders in the
diffusers layout, so that ``presets/hw4.yaml`` runs end to end where the hub cannot be reached
(timing and memory only: the images are noise).

* ``ddpm-cifar10-32``: google/ddpm-cifar10-32's ``UNet2DModel`` (35.7 M parameters) and its DDPM
  scheduler (linear betas 1e-4..0.02, T = 1000), ``config.json`` and ``scheduler_config.json`` at
  the folder's root as on the hub;
* ``stable-diffusion-v1-4``: Stable Diffusion v1.4's UNet, CLIP ViT-L/14 text encoder and VAE shapes
  (``bench_p2p.random_sd``) with the PNDM scheduler of its hub folder, in ``unet/``, ``text_encoder/``,
  ``tokenizer/``, ``vae/`` and ``scheduler/``. The tokenizer is the tests' BPE tokenizer with CLIP's
  77-token window (CLIP's vocabulary files are not on this machine): prompts are split into more
  tokens than CLIP's would, which changes no tensor shape.

``--smoke`` writes the same layouts at the tests' tiny sizes (a CPU check of the GPU script).

    .venv/bin/python bench/random_models.py /tmp/random-models            # full size (~1.8 GB in fp16)
    .venv/bin/python bench/random_models.py /tmp/random-models --smoke
"""

from __future__ import annotations

import argparse
from pathlib import Path

CIFAR10 = "ddpm-cifar10-32"
SD = "stable-diffusion-v1-4"


def ddpm_scheduler():
    """google/ddpm-cifar10-32's scheduler: linear betas 1e-4..0.02 over T = 1000."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def write_ddpm(folder: Path, smoke: bool = False) -> Path:
    """The DDPM of exercise 4 (random weights) in ``folder``: config.json, weights, scheduler_config.json."""
    from bench_ddim import cifar10_unet

    from diffusion_report.models import ddpm
    from diffusion_report.testing import tiny_unet_config

    if smoke:
        cfg = dict(tiny_unet_config(), sample_size=32, in_channels=3, out_channels=3)
        unet = ddpm.build_unet(cfg, seed=0)
    else:
        unet = cifar10_unet()
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder, safe_serialization=True)
    ddpm_scheduler().save_pretrained(folder)
    return folder


def smoke_sd():
    """Stable Diffusion's layout (a VAE, SD's PNDM scheduler, CLIP's 77-token window) at the tests' tiny sizes."""
    from bench_p2p import sd_scheduler

    from diffusion_report.testing import tiny_pipe

    pipe = tiny_pipe(pixel=False, max_len=77)
    pipe.scheduler = sd_scheduler()
    return pipe


def write_sd(folder: Path, smoke: bool = False, device: str = "auto") -> Path:
    """The text-to-image model of exercise 5 (random weights) in ``folder``, in the diffusers layout
    (fp16 weights when built on a GPU: the preset loads them in fp16 there)."""
    if smoke:
        pipe = smoke_sd()
    else:
        from bench_p2p import random_sd

        pipe = random_sd(device, fp16=True)
    folder.mkdir(parents=True, exist_ok=True)
    pipe.unet.save_pretrained(folder / "unet", safe_serialization=True)
    pipe.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    pipe.tokenizer.save_pretrained(folder / "tokenizer")
    pipe.scheduler.save_pretrained(folder / "scheduler")
    pipe.vae.save_pretrained(folder / "vae", safe_serialization=True)
    return folder


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help=f"writes <folder>/{CIFAR10} and <folder>/{SD}")
    ap.add_argument("--smoke", action="store_true", help="the tests' tiny sizes (a CPU check)")
    ap.add_argument("--device", default="auto", help="where the full-size SD modules are built (auto: CUDA if there)")
    args = ap.parse_args(argv)
    print(write_ddpm(args.folder / CIFAR10, args.smoke))
    print(write_sd(args.folder / SD, args.smoke, args.device))


if __name__ == "__main__":
    main()
