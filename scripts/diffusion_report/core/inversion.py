"""Editing a given image: DDIM inversion, null-text inversion (Mokady et al., CVPR 2023), then
guided DDIM with per-step unconditional embeddings, optionally under a prompt-to-prompt controller.

Pure functions over any diffusers ``UNet2DConditionModel`` (called as ``unet(x, k,
encoder_hidden_states=c).sample``, epsilon prediction) and a DDIM timestep sequence in diffusers'
numbering (what ``DDIMScheduler.set_timesteps`` leaves in ``scheduler.timesteps``): ``timesteps``
is decreasing, k_1 > k_2 > ... > k_S, and ``alphas_cumprod[k]`` is abar at diffusers' timestep k
(the project's t = k + 1, see :mod:`diffusion_report.core.schedules`). The clean image sits at
``final_alpha_cumprod`` (1.0: abar_0 = 1, the project's convention and diffusers'
``set_alpha_to_one``; Stable Diffusion's scheduler uses ``alphas_cumprod[0]``).

Shapes: x (B, C, h, w) latents (the image itself for a pixel-space model, in [-1, 1]); a prompt
embedding (L, D) or (B, L, D) (the text encoder's states: L tokens of width D); the null
embeddings of one inversion (S, L, D), one per sampling step, in sampling order (step 0 starts at
x_T). A pivot is a list of S + 1 latents [x_0, x_{k_S}, ..., x_{k_1}]: ``pivot[0]`` the image,
``pivot[-1]`` x_T; sampling step i (from k_{i+1}) goes from ``pivot[S - i]`` to ``pivot[S - i - 1]``.

The DDIM step (DDIM eq. 12 with sigma = 0, via eq. 9) between abar_a (current) and abar_b (next):

    x0_hat = (x - sqrt(1 - abar_a) eps) / sqrt(abar_a),
    x'     = sqrt(abar_b) x0_hat + sqrt(1 - abar_b) eps,

used backwards for inversion (Mokady et al. sec. 3, "DDIM inversion"; DDIM sec. 4.3, eq. 14's ODE
run from x_0: abar_b > abar_a is sampling, abar_b < abar_a inversion, with eps taken at the current point and the noisier
timestep) and forwards for sampling. No clipping of x0_hat anywhere: a clipped step cannot be
inverted (the reference implementation also sets ``clip_sample=False``), so the sampler here is
not bit-for-bit the model's own scheduler when its config clips.

Guidance (classifier-free, Ho & Salimans 2022; Mokady et al. sec. 3, with w the guidance scale and
the unconditional embedding in place of the empty prompt's):

    eps = eps(x, k, null) + w (eps(x, k, cond) - eps(x, k, null))   (= w eps(cond) + (1 - w) eps(null)).

Everything is deterministic: no random draws at all (Adam starts from the given embedding).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

EARLY_STOP_SLOPE = 2e-5  # the reference's threshold grows by this per step: epsilon + i * 2e-5
# The learning rate at step i of S: lr * (1 - i / (2 S)). The reference hard-codes lr * (1 - i / 100)
# for its S = 50 steps (half the rate at the end); this keeps that shape for any S.


def _alphas(timesteps: Sequence[int], alphas_cumprod, final_alpha_cumprod: float) -> list[tuple[int, float, float]]:
    """Per sampling step i: (k_i, abar at k_i, abar at the next timestep or ``final_alpha_cumprod``)."""
    ks = [int(k) for k in (timesteps.tolist() if isinstance(timesteps, torch.Tensor) else timesteps)]
    if any(a <= b for a, b in zip(ks, ks[1:])):
        raise ValueError(f"timesteps must be strictly decreasing (sampling order), got {ks}")
    ab = [float(alphas_cumprod[k]) for k in ks]
    return [(k, a, b) for k, a, b in zip(ks, ab, ab[1:] + [float(final_alpha_cumprod)])]


def ddim_move(eps: torch.Tensor, x: torch.Tensor, abar_from: float, abar_to: float) -> torch.Tensor:
    """One deterministic DDIM move from abar_from to abar_to (either direction), shapes (B, C, h, w).

    1. x0_hat = (x - sqrt(1 - abar_from) eps) / sqrt(abar_from)   (DDIM eq. 9)
    2. x'     = sqrt(abar_to) x0_hat + sqrt(1 - abar_to) eps      (DDIM eq. 12, sigma = 0)
    """
    x0 = (x - math.sqrt(1.0 - abar_from) * eps) / math.sqrt(abar_from)  # 1.
    return math.sqrt(abar_to) * x0 + math.sqrt(1.0 - abar_to) * eps  # 2.


def _batch(emb: torch.Tensor, B: int) -> torch.Tensor:
    """(L, D) or (1 or B, L, D) -> (B, L, D)."""
    emb = emb if emb.ndim == 3 else emb[None]
    return emb.expand(B, *emb.shape[1:]) if emb.shape[0] == 1 else emb


def _eps(unet, x: torch.Tensor, k: int, emb: torch.Tensor) -> torch.Tensor:
    t = torch.full((x.shape[0],), int(k), dtype=torch.long, device=x.device)
    return unet(x, t, encoder_hidden_states=emb.to(x.device, x.dtype)).sample


@torch.no_grad()
def ddim_invert(unet, x0: torch.Tensor, cond_emb: torch.Tensor, timesteps, alphas_cumprod, *,
                final_alpha_cumprod: float = 1.0) -> list[torch.Tensor]:
    """DDIM inversion at guidance 1 under the source prompt: the pivot [x_0, ..., x_T] (S + 1 latents).

    x0 (B, C, h, w) (pixel space: the image in [-1, 1]); cond_emb (L, D) or (B, L, D). For the
    sampling steps taken backwards, i = S-1 .. 0 (Mokady et al. sec. 3, "DDIM inversion", the pivot of
    their pivotal tuning; the reverse of DDIM eq. 12, DDIM sec. 4.3 eq. 14 discretised as in the
    reference code):

    1. eps = eps_theta(x, k_{i+1}, C): the network at the noisier timestep and the current point
       (it is not defined at the clean end; diffusers' ``DDIMInverseScheduler`` does the same);
    2. x <- :func:`ddim_move` (eps, x, abar_prev, abar_{k_{i+1}}), from the less noisy level to k_{i+1}.

    Decoding the last latent with :func:`sample_with_nulls` at guidance 1 returns x0 up to the
    discretisation error of the two directions, which shrinks as S grows.
    """
    steps = _alphas(timesteps, alphas_cumprod, final_alpha_cumprod)
    cond = _batch(cond_emb, x0.shape[0])
    x = x0
    pivot = [x0.clone()]
    for k, a_t, a_prev in reversed(steps):
        eps = _eps(unet, x, k, cond)  # 1.
        x = ddim_move(eps, x, a_prev, a_t)  # 2.
        pivot.append(x.clone())
    return pivot


def guided_step(unet, x: torch.Tensor, k: int, a_t: float, a_prev: float, cond: torch.Tensor, null: torch.Tensor,
                guidance: float, eps_cond: torch.Tensor | None = None) -> torch.Tensor:
    """One guided DDIM sampling step x_{k} -> x_{prev}: the guidance of the module docstring, then DDIM eq. 12.

    cond, null (B, L, D). ``eps_cond`` reuses the conditional prediction (it does not depend on
    the null embedding). Differentiable in ``null``.
    """
    if eps_cond is None:
        eps_cond = _eps(unet, x, k, cond)
    eps_null = _eps(unet, x, k, null)
    eps = eps_null + guidance * (eps_cond - eps_null)
    return ddim_move(eps, x, a_t, a_prev)


def null_text_invert(unet, pivot: Sequence[torch.Tensor], cond_emb: torch.Tensor, uncond_emb: torch.Tensor, timesteps,
                     alphas_cumprod, guidance: float, inner_steps: int = 10, lr: float = 1e-2, early_stop: float = 1e-5, *,
                     final_alpha_cumprod: float = 1.0, return_losses: bool = False, per_image: bool = False):
    """Null-text inversion (Mokady et al. Algorithm 1, pivotal tuning): one optimised unconditional
    embedding per sampling step so that guided DDIM from the pivot's x_T follows the pivot.

    pivot: S + 1 latents from :func:`ddim_invert` (each (B, C, h, w)); cond_emb, uncond_emb (L, D)
    (or (1, L, D)): the source prompt's and the empty prompt's embeddings. For i = 0 .. S-1
    (timestep k_{i+1}, from x_T down), starting from x_cur = pivot[-1] and null = uncond_emb:

    1. null_i starts from the previous step's result (null_{i-1}; the empty prompt's at i = 0);
    2. up to ``inner_steps`` Adam steps (learning rate ``lr * (1 - i / (2 S))``: the reference's
       ``lr * (1 - i / 100)`` for its S = 50, for any S) on
       loss = || pivot[S-i-1] - guided_step(x_cur, k_{i+1}, C, null_i) ||^2 (mean squared error,
       Algorithm 1's objective, with the guided step inside), leaving early once the loss (before the step) is
       below ``early_stop + i * 2e-5`` (the reference implementation's threshold, looser at each step);
    3. x_cur <- guided_step(x_cur, k_{i+1}, C, null_i) with the optimised null_i (not the pivot:
       the next step starts where sampling will actually be).

    Returns the null embeddings (S, L, D) (detached, float32 on the input's device), and with
    ``return_losses`` also the last loss of each step (S,). A loss that is not finite raises
    ValueError naming the step and timestep. Deterministic: no random draws.

    ``per_image``: the B images of the pivot are B independent inversions run as one batch: one
    null embedding per image, (S, B, L, D), losses (S, B). Each image's loss is its own mean squared
    error and the batch minimises their sum, so each embedding gets exactly its own gradient (Adam is
    elementwise); an image whose loss fell below the threshold is frozen for the rest of the step,
    as its own loop would have left. The result equals B separate calls up to float rounding.
    """
    steps = _alphas(timesteps, alphas_cumprod, final_alpha_cumprod)
    S = len(steps)
    if len(pivot) != S + 1:
        raise ValueError(f"null_text_invert: the pivot has {len(pivot)} latents; {S} timesteps need {S + 1}")
    x = pivot[-1].detach()
    B = x.shape[0]
    cond = _batch(cond_emb, B).detach()
    null = (uncond_emb if uncond_emb.ndim == 2 else uncond_emb[0]).detach().clone()
    if per_image:
        null = null.expand(B, *null.shape).clone()  # (B, L, D)
    nulls, losses = [], []
    for i, (k, a_t, a_prev) in enumerate(steps):
        target = pivot[S - i - 1].detach()
        with torch.no_grad():
            eps_cond = _eps(unet, x, k, cond)
        null = null.detach().clone().requires_grad_(True)  # 1.
        opt = torch.optim.Adam([null], lr=lr * (1.0 - i / (2.0 * S)))
        threshold = early_stop + i * EARLY_STOP_SLOPE
        active = torch.ones(B if per_image else 1, dtype=torch.bool, device=x.device)
        last = torch.full(active.shape, float("nan"))
        for _ in range(int(inner_steps)):  # 2.
            with torch.enable_grad():
                pred = guided_step(unet, x, k, a_t, a_prev, cond, null if per_image else _batch(null, B), guidance, eps_cond)
                per = ((pred - target) ** 2).flatten(1).mean(1) if per_image else F.mse_loss(pred, target)[None]
                values = per.detach().cpu()
                bad = ~torch.isfinite(values)
                if bad.any():
                    which = f" of image {int(bad.nonzero()[0])}" if per_image else ""
                    raise ValueError(f"null-text inversion: the loss{which} is not finite ({float(values[bad][0])}) at step {i} "
                                     f"(timestep {k}) of {S}; lower the guidance scale or the learning rate")
                last = torch.where(active.cpu(), values, last)
                frozen = null.detach()[~active].clone() if per_image else None
                opt.zero_grad()
                per.sum().backward()
                opt.step()
                if per_image and frozen.numel():
                    with torch.no_grad():
                        null[~active] = frozen
            active &= (values >= threshold).to(active.device)
            if not active.any():
                break
        null = null.detach()
        if not torch.isfinite(null).all():
            raise ValueError(f"null-text inversion: the null embedding is not finite after step {i} (timestep {k}) of {S}")
        nulls.append(null.clone())
        losses.append(last if per_image else last[0])
        with torch.no_grad():  # 3.
            x = guided_step(unet, x, k, a_t, a_prev, cond, null if per_image else _batch(null, B), guidance, eps_cond)
    out = torch.stack(nulls)
    return (out, torch.stack(losses) if per_image else torch.tensor(losses)) if return_losses else out


@torch.no_grad()
def sample_with_nulls(unet, x_T: torch.Tensor, cond_embs: torch.Tensor, null_embs: torch.Tensor, timesteps, alphas_cumprod,
                      guidance: float, controller=None, *, final_alpha_cumprod: float = 1.0) -> torch.Tensor:
    """Guided DDIM from x_T with one unconditional embedding per step; returns the final latents.

    x_T (1 or B, C, h, w) (shared by all prompts when 1); cond_embs (B, L, D) one per prompt;
    null_embs (S, L, D) (the same null for every prompt, as in the paper's editing), (S, B, L, D)
    (one per prompt: several inverted images edited in one batch) or (L, D) (one for all steps:
    plain classifier-free guidance with the empty prompt). With a
    prompt-to-prompt ``controller`` (:mod:`diffusion_report.core.attention`) the batch runs as
    :func:`diffusion_report.models.text2image.generate` runs it: the controller is installed on
    every attention layer for the call (``unet.set_attn_processor``, restored afterwards), the
    UNet sees the unconditional half first, and ``controller.end_step`` follows every step.
    Each step is :func:`guided_step` in one UNet call on the (2B) batch.
    """
    from diffusion_report.core.attention import install

    steps = _alphas(timesteps, alphas_cumprod, final_alpha_cumprod)
    B = cond_embs.shape[0]
    if x_T.ndim != 4 or x_T.shape[0] not in (1, B):
        raise ValueError(f"x_T must have shape (1, C, h, w) or ({B}, C, h, w), got {tuple(x_T.shape)}")
    nulls = null_embs if null_embs.ndim >= 3 else null_embs[None].expand(len(steps), *null_embs.shape)
    if nulls.shape[0] != len(steps):
        raise ValueError(f"sample_with_nulls: {nulls.shape[0]} null embeddings for {len(steps)} steps")
    x = x_T.expand(B, *x_T.shape[1:]).clone()
    restore = None
    if controller is not None:
        controller.begin(unet, x.shape[-2:], B)
        restore = install(unet, controller)
    try:
        for i, (k, a_t, a_prev) in enumerate(steps):
            context = torch.cat([_batch(nulls[i], B), cond_embs]).to(x.device, x.dtype)  # (2B, L, D), unconditional first
            out = _eps(unet, torch.cat([x, x]), k, context)
            eps_null, eps_cond = out.chunk(2)
            x = ddim_move(eps_null + guidance * (eps_cond - eps_null), x, a_t, a_prev)
            if controller is not None:
                x = controller.end_step(x)
    finally:
        if restore is not None:
            unet.set_attn_processor(restore)
    return x
