"""Train a small DDPM (Ho et al. 2020) on scikit-learn's digits: the embedded, offline model.

Algorithm 1 of the DDPM paper with the "simple" loss (eq. 14):

    L_simple = E_{t, x_0, eps} || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2

with t uniform in 1..T (our convention, see :mod:`diffusion_report.core.schedules`; the UNet is called with the
diffusers timestep t - 1), AdamW, a linear warm-up then cosine learning-rate decay, and an
exponential moving average (EMA) of the weights, which is what is saved and sampled from.

Every random draw (initial weights, batches, t, eps) comes from a generator seeded from the
config, so a run on the same machine and thread count gives the same weights.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffusion_report.core.forward import q_sample
from diffusion_report.core.schedules import Schedule
from diffusion_report.io import atomic_path, make_generator
from diffusion_report.models.ddpm import build_unet

log = logging.getLogger(__name__)


def simple_loss(unet, x0: torch.Tensor, schedule: Schedule, gen: torch.Generator) -> torch.Tensor:
    """L_simple (DDPM eq. 14) on one batch x0 (B, C, H, W); t ~ U{1..T}, eps ~ N(0, I) from ``gen``."""
    b = x0.shape[0]
    t = torch.randint(1, schedule.T + 1, (b,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    x_t = q_sample(x0, t, eps, schedule)  # DDPM eq. 4
    eps_pred = unet(x_t, t - 1).sample  # diffusers timestep k = t - 1
    return F.mse_loss(eps_pred, eps)


@torch.no_grad()
def ema_update(ema_params, params, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * model over matching parameter lists, d = min(decay, (1 + step) / (10 + step)).

    The warm-up averages more aggressively early on, as diffusers' EMAModel does.
    """
    d = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema_params), list(params), 1.0 - d)


def lr_at(step: int, total: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to 10% of ``base_lr``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_ddpm(
    data: torch.Tensor,
    schedule: Schedule,
    unet_cfg: dict,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    ema_decay: float,
    seed: int,
    log_every: int = 50,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 500,
    _stop_after: int | None = None,
):
    """Train a UNet on ``data`` (N, C, H, W) in [-1, 1]. Returns (ema_unet, losses: list[float]).

    1. draw a batch of x_0 (with replacement) and t, eps from seeded generators;
    2. take an AdamW step on L_simple;
    3. update the EMA copy (decay ``ema_decay``).

    With ``checkpoint`` (a file path) the full state (weights, EMA, optimiser, both generators,
    losses) is saved atomically every ``checkpoint_every`` steps and training resumes from it
    when it exists: a run killed and restarted gives the same weights as one left alone.
    """
    unet = build_unet(unet_cfg, seed)
    unet.train()
    ema = copy.deepcopy(unet).eval()
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=learning_rate, weight_decay=0.0)
    gen_batch = make_generator(seed, "ddim_train_batches")
    gen_noise = make_generator(seed, "ddim_train_noise")
    warmup = max(1, min(100, steps // 10))
    losses: list[float] = []
    start = 0
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        gen_batch.set_state(state["gen_batch"])
        gen_noise.set_state(state["gen_noise"])
        losses = [float(v) for v in state["losses"]]
        start = int(state["step"])
        log.info("resumed from %s at step %d", checkpoint, start)
    it = range(start, steps if _stop_after is None else min(steps, _stop_after))  # _stop_after: tests of resuming
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="ddim_train", file=sys.stderr, mininterval=10.0, initial=start, total=steps)
    t0 = time.perf_counter()
    for step in it:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, learning_rate, warmup)
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=gen_batch)
        loss = simple_loss(unet, data[idx], schedule, gen_noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema_update(ema.parameters(), unet.parameters(), ema_decay, step)
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            recent = sum(losses[-log_every:]) / log_every
            log.info("step %d/%d  loss %.4f  (%.1f s)", step + 1, steps, recent, time.perf_counter() - t0)
        if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            state = {"unet": unet.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                     "gen_batch": gen_batch.get_state(), "gen_noise": gen_noise.get_state(),
                     "losses": torch.tensor(losses, dtype=torch.float64), "step": step + 1}
            with atomic_path(checkpoint) as tmp:
                torch.save(state, tmp)
    return ema, losses
