"""Variance schedules of the forward process.

Timestep convention (used everywhere in this package)
-----------------------------------------------------
``t = 0`` is the clean image and ``t = 1..T`` are noised. Every array returned here has length
``T + 1`` and is indexed by ``t`` directly:

* ``betas[t]``       beta_t, with ``betas[0] = 0`` (no noise at t = 0);
* ``alphas[t]``      alpha_t = 1 - beta_t;
* ``alpha_bars[t]``  alpha_bar_t = prod_{i<=t} (1 - beta_i), so ``alpha_bars[0] = 1``.

diffusers' schedulers index from 0 with one step of noise already applied: their
``alphas_cumprod[k]`` is our ``alpha_bars[k + 1]`` and their timestep ``k`` is our ``t = k + 1``.
Use :func:`to_diffusers_timestep` / :func:`from_diffusers_timestep` at that boundary only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCHEDULES = ("linear", "cosine", "quadratic", "sigmoid")


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear schedule (Ho et al. 2020, sec. 4): beta_1..beta_T evenly spaced. Shape (T,)."""
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)


def quadratic_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """sqrt(beta) evenly spaced (the "scaled_linear" schedule of latent diffusion). Shape (T,)."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2


def sigmoid_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """beta follows a sigmoid over [-6, 6], rescaled to [beta_start, beta_end]. Shape (T,)."""
    x = torch.linspace(-6.0, 6.0, T, dtype=torch.float64)
    return torch.sigmoid(x) * (beta_end - beta_start) + beta_start


def cosine_alpha_bar(t: torch.Tensor, T: int, s: float = 0.008) -> torch.Tensor:
    """Improved DDPM (Nichol & Dhariwal 2021, eq. 17) before normalisation: f(t) = cos^2(...)."""
    return torch.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM's cosine schedule: beta_t = min(1 - abar(t)/abar(t-1), max_beta). Shape (T,)."""
    t = torch.arange(T + 1, dtype=torch.float64)
    f = cosine_alpha_bar(t, T, s)
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def make_betas(kind: str, T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """beta_1..beta_T of the named schedule, float64, shape (T,)."""
    if kind == "linear":
        return linear_betas(T, beta_start, beta_end)
    if kind == "quadratic":
        return quadratic_betas(T, beta_start, beta_end)
    if kind == "sigmoid":
        return sigmoid_betas(T, beta_start, beta_end)
    if kind == "cosine":
        return cosine_betas(T)
    raise ValueError(f"unknown schedule {kind!r}; allowed: {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class Schedule:
    """A variance schedule indexed by t = 0..T (see the module docstring)."""

    betas: torch.Tensor  # (T + 1,), betas[0] = 0
    alphas: torch.Tensor  # (T + 1,), alphas[0] = 1
    alpha_bars: torch.Tensor  # (T + 1,), alpha_bars[0] = 1

    @property
    def T(self) -> int:
        return self.betas.shape[0] - 1

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> "Schedule":
        """Build from beta_1..beta_T (shape (T,)); prepends beta_0 = 0."""
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError("betas must be a non-empty 1-D sequence")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta_t must lie in (0, 1)")
        betas = torch.cat([betas.new_zeros(1), betas])
        alphas = 1.0 - betas
        return cls(betas=betas, alphas=alphas, alpha_bars=torch.cumprod(alphas, dim=0))

    @classmethod
    def make(cls, kind: str, T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> "Schedule":
        return cls.from_betas(make_betas(kind, T, beta_start, beta_end))

    @classmethod
    def from_config(cls, cfg: dict) -> "Schedule":
        """From the workflow config's ``schedule`` block (keys: kind, T, beta_start, beta_end)."""
        return cls.make(cfg["kind"], int(cfg["T"]), float(cfg["beta_start"]), float(cfg["beta_end"]))

    def posterior_variance(self) -> torch.Tensor:
        """beta_tilde_t = (1 - abar_{t-1}) / (1 - abar_t) * beta_t for t >= 1; entry 0 is 0. (T+1,)"""
        out = torch.zeros_like(self.betas)
        ab = self.alpha_bars
        out[1:] = (1 - ab[:-1]) / (1 - ab[1:]) * self.betas[1:]
        return out


def to_diffusers_timestep(t: int) -> int:
    """Our t (1..T) -> the diffusers scheduler's timestep index (0..T-1)."""
    if t < 1:
        raise ValueError("t = 0 is the clean image and has no diffusers timestep")
    return t - 1


def from_diffusers_timestep(k: int) -> int:
    """The diffusers scheduler's timestep index (0..T-1) -> our t (1..T)."""
    return k + 1
