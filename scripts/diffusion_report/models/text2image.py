"""Text-to-image sampling with classifier-free guidance, for prompt-to-prompt editing.

A :class:`Text2Image` bundles the parts of a diffusers text-to-image model (UNet2DConditionModel,
text encoder, tokenizer, scheduler and, for latent diffusion, the VAE). :func:`generate` runs the
denoising loop for a batch of prompts from one shared x_T; a prompt-to-prompt controller (see
:mod:`diffusion_report.core.attention`) is installed on the UNet's attention layers for the duration of the
call through ``unet.set_attn_processor`` and restored afterwards.

Works with Stable Diffusion v1.x (latent space, ``vae`` present), with the tiny models the tests
build in code, and with pixel-space models (``vae is None``: the final sample is the image).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffusion_report.core.attention import AttentionStore, install, text_max_length
from diffusion_report.io import make_generator
from diffusion_report.models.loading import load_part, load_pretrained, resolve_device

log = logging.getLogger(__name__)

SCHEDULERS = ("ddim", "pndm")


@dataclass
class Text2Image:
    """The parts of a text-to-image diffusion model.

    ``vae is None`` means pixel space: the UNet works on images in [-1, 1] and the final sample is
    the image itself (no decoding).
    """

    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    vae: Any = None
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    embeddings: dict = field(default_factory=dict, repr=False)  # prompt -> (L, D) text-encoder states

    @property
    def max_length(self) -> int:
        """Length of the padded token sequence fed to the text encoder (77 for CLIP)."""
        return text_max_length(self.tokenizer, self.text_encoder)

    @property
    def image_size(self) -> int:
        """Side of the images the model makes: the latent side, times the VAE's downsampling (2 per
        VAE block after the first: 8 for Stable Diffusion) in latent space."""
        h = self.latent_shape[1]
        return h if self.vae is None else h * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of x_T: the UNet's input channels and sample size."""
        cfg = self.unet.config
        size = cfg.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(cfg.in_channels), int(h), int(w)


def make_scheduler(kind: str, config, *, latent: bool):
    """A fresh DDIM or PNDM scheduler from a scheduler config (any diffusers scheduler's).

    For latent models DDIM's ``clip_sample`` is switched off (latents are not bounded by 1).
    """
    from diffusers import DDIMScheduler, PNDMScheduler

    if kind == "ddim":
        extra = {"clip_sample": False} if latent else {}
        return DDIMScheduler.from_config(config, **extra)
    if kind == "pndm":
        return PNDMScheduler.from_config(config, skip_prk_steps=True)
    raise ValueError(f"p2p.scheduler: {kind!r} is not one of {', '.join(SCHEDULERS)}")


def load_text2image(
    id_or_path: str | os.PathLike,
    *,
    config_key: str,
    device: str | torch.device = "auto",
    fp16: bool = False,
    scheduler: str = "ddim",
) -> Text2Image:
    """Load unet/, text_encoder/, tokenizer/, scheduler/ (and vae/ when present) of a model.

    ``id_or_path`` is a hub id (looked up in the Hugging Face cache) or a local folder in the
    diffusers layout. A local folder without ``vae/`` is a pixel-space model. ``fp16`` applies on
    CUDA only. Errors name ``config_key`` and say how to provide the model.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoModel, AutoTokenizer

    if scheduler not in SCHEDULERS:
        raise ValueError(f"p2p.scheduler: {scheduler!r} is not one of {', '.join(SCHEDULERS)}")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dtype = torch.float16 if (fp16 and dev.type == "cuda") else torch.float32
    where = str(id_or_path)
    local = Path(where).expanduser()
    has_vae = (local / "vae").is_dir() if local.exists() else True

    unet = load_pretrained(UNet2DConditionModel, where, config_key=config_key, subfolder="unet", torch_dtype=dtype)
    text_encoder = load_pretrained(AutoModel, where, config_key=config_key, subfolder="text_encoder", dtype=dtype)
    tokenizer = _load_tokenizer(AutoTokenizer, where, config_key)
    sched_cfg = _load_scheduler_config(where, config_key)
    vae = load_pretrained(AutoencoderKL, where, config_key=config_key, subfolder="vae", torch_dtype=dtype) if has_vae else None
    for m in (unet, text_encoder, vae):
        if m is not None:
            m.to(dev).eval().requires_grad_(False)
    sched = make_scheduler(scheduler, sched_cfg, latent=vae is not None)
    log.info("loaded %s (%s, %s, %s)", where, "latent" if vae is not None else "pixel space", dev, dtype)
    return Text2Image(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=sched, vae=vae, device=dev, dtype=dtype)


def _load_tokenizer(auto_cls, where: str, config_key: str):
    return load_part(lambda: auto_cls.from_pretrained(where, subfolder="tokenizer"), "the tokenizer", where,
                     config_key=config_key, subfolder="tokenizer")


def _load_scheduler_config(where: str, config_key: str):
    from diffusers import DDIMScheduler

    return load_part(lambda: DDIMScheduler.load_config(where, subfolder="scheduler"), "the scheduler config", where,
                     config_key=config_key, subfolder="scheduler")


def initial_latents(pipe: Text2Image, seed: int, name: str | int) -> torch.Tensor:
    """x_T ~ N(0, I) of shape (1, C, h, w), drawn on the CPU from ``make_generator(seed, name)``.

    Drawing on the CPU in float32 makes x_T the same on every device.
    """
    c, h, w = pipe.latent_shape
    gen = make_generator(seed, name)
    x = torch.randn((1, c, h, w), generator=gen, dtype=torch.float32)
    return x.to(pipe.device, pipe.dtype)


def tokenize(tokenizer, prompts: list[str], max_length: int) -> torch.Tensor:
    """Token ids padded to ``max_length``, shape (B, max_length)."""
    enc = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    return enc.input_ids


@torch.no_grad()
def encode_prompts(pipe: Text2Image, prompts: list[str]) -> torch.Tensor:
    """Text-encoder states of the prompts, shape (B, L, D).

    Each distinct prompt is encoded once per model: the states are kept in ``pipe.embeddings``
    (an edit pair, its no-control baseline and the unconditional "" share them).
    """
    missing = list(dict.fromkeys(p for p in prompts if p not in pipe.embeddings))
    if missing:
        ids = tokenize(pipe.tokenizer, missing, pipe.max_length).to(pipe.device)
        states = pipe.text_encoder(ids)[0].to(pipe.dtype)
        pipe.embeddings.update(zip(missing, states))
    return torch.stack([pipe.embeddings[p] for p in prompts])


@torch.no_grad()
def generate(
    pipe: Text2Image,
    prompts: list[str],
    x_T: torch.Tensor,
    num_steps: int,
    guidance_scale: float,
    controller=None,
    *,
    plain: bool = False,
    return_latents: bool = False,
):
    """Sample one image per prompt, all from the same x_T (or one each), with classifier-free guidance.

    Args:
        x_T: (1, C, h, w) initial noise shared by all prompts (see :func:`initial_latents`), or
            (B, C, h, w): one per prompt (several edits in one batch).
        controller: a prompt-to-prompt controller; ``None`` means an
            :class:`~diffusion_report.core.attention.AttentionStore` (the images are those of plain sampling).
        plain: install no processor at all (diffusers' default attention runs everywhere); the
            returned store is then ``None``. For benchmarks.
    Returns:
        images (B, 3, H, W) float32 on the CPU, in [-1, 1]; the controller (attention store);
        and, with ``return_latents``, the final latents (B, C, h, w).
    """

    prompts = list(prompts)
    B = len(prompts)
    if x_T.ndim != 4 or x_T.shape[0] not in (1, B):
        raise ValueError(f"x_T must have shape (1, C, h, w) or ({B}, C, h, w), got {tuple(x_T.shape)}")
    if controller is None and not plain:
        controller = AttentionStore()
    cond = encode_prompts(pipe, prompts)
    uncond = encode_prompts(pipe, [""] * B)
    context = torch.cat([uncond, cond])  # (2B, L, D): unconditional half first
    sched = pipe.scheduler
    sched.set_timesteps(num_steps, device=pipe.device)
    latents = x_T.to(pipe.device, pipe.dtype).expand(B, *x_T.shape[1:]).clone() * sched.init_noise_sigma

    restore = None
    if controller is not None:
        controller.begin(pipe.unet, latents.shape[-2:], B)
        restore = install(pipe.unet, controller)
    step = step_options(sched)
    try:
        for t in sched.timesteps:
            model_in = sched.scale_model_input(torch.cat([latents, latents]), t)
            out = pipe.unet(model_in, t, encoder_hidden_states=context).sample
            out_uncond, out_cond = out.chunk(2)
            out = out_uncond + guidance_scale * (out_cond - out_uncond)
            latents = sched.step(out, t, latents, **step).prev_sample
            if controller is not None:
                latents = controller.end_step(latents)
    finally:
        if restore is not None:
            pipe.unet.set_attn_processor(restore)
    images = decode(pipe, latents)
    if return_latents:
        return images, controller, latents
    return images, controller


def step_options(sched) -> dict:
    """Keyword arguments for ``sched.step``: with a clipped x_0 (DDIM on a pixel-space model with
    ``clip_sample``), the direction term uses the noise re-derived from the clipped x_0.

    DDIM's step is x_{t'} = sqrt(abar_t') x0 + sqrt(1 - abar_t') eps (eq. 12, sigma = 0). Once x0 is
    clipped to [-1, 1], guided-diffusion's ``ddim_sample`` (the pixel-space classifier-free-guidance
    reference: GLIDE) re-derives eps = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t) from it, so both
    terms agree on one x0; diffusers' default keeps the unclipped eps. Under guidance the unclipped
    eps carries the extrapolated x0 that clipping removed, and the next step reads an x0 pushed the
    other way: the embedded model's colours flip (README, Performance, round 12). A latent model
    (``clip_sample`` false) and PNDM get no option: their steps are unchanged.
    """
    if type(sched).__name__ == "DDIMScheduler" and getattr(sched.config, "clip_sample", False):
        return {"use_clipped_model_output": True}
    return {}


@torch.no_grad()
def encode(pipe: Text2Image, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> the UNet's latents (B, C, h, w) on the model's device and dtype.

    Pixel space: the images themselves. Latent space: the VAE posterior's mean times the VAE's
    scaling factor (deterministic: no sample is drawn; the mode, as null-text inversion's reference
    code takes it), the inverse of :func:`decode` up to the autoencoder's reconstruction error.
    """
    x = images.to(pipe.device, pipe.dtype)
    if pipe.vae is None:
        return x
    return pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor


@torch.no_grad()
def decode(pipe: Text2Image, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, h, w) -> images (B, 3, H, W) float32 on the CPU, clamped to [-1, 1]."""
    if pipe.vae is None:
        img = latents
    else:
        img = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return img.float().clamp(-1, 1).cpu()
