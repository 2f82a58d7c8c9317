"""The forward (noising) process of DDPM and its corruption measured by MSE (exercise 3).

Notation follows Ho et al. (2020) and :mod:`diffusion_report.core.schedules`: t = 0 is the clean image,
``schedule.alpha_bars[t]`` = prod_{i<=t} (1 - beta_i).


Also the posterior q(x_{t-1} | x_t, x_0) of Ho et al. (eqs. 6-7) and its mean in terms of the
predicted noise (eq. 11), which the theory checks verify.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import torch

from diffusion_report.core.schedules import Schedule
from diffusion_report.io import make_generator


def _coef(values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """values[t] broadcast against a batch ``like`` of shape (B, ...) or (...)."""
    t = torch.as_tensor(t, dtype=torch.long)
    out = values[t].to(like.dtype)
    return out.reshape(out.shape + (1,) * (like.ndim - out.ndim))


def q_sample(x0: torch.Tensor, t: torch.Tensor | int, noise: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """One-step closed form (Ho et al. 2020, eq. 4): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps.

    Args:
        x0: clean data, shape (B, C, H, W) (or any shape when ``t`` is a scalar).
        t: a timestep 0..T, or a (B,) tensor of them (one per sample, broadcast over the rest).
        noise: eps ~ N(0, I), same shape as x0 (or broadcastable to it).
    Returns:
        x_t, same shape as ``noise`` broadcast with ``x0``.
    """
    sqrt_ab = _coef(schedule.alpha_bars.sqrt(), t, noise)
    sqrt_1mab = _coef((1.0 - schedule.alpha_bars).sqrt(), t, noise)
    return sqrt_ab * x0 + sqrt_1mab * noise


def q_step(x_prev: torch.Tensor, t: int, noise: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """One Markov step (Ho et al. 2020, eq. 2): x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps_t."""
    beta = schedule.betas[t]
    return (1.0 - beta).sqrt().to(x_prev.dtype) * x_prev + beta.sqrt().to(x_prev.dtype) * noise


def q_sample_chain(x0: torch.Tensor, t: int, schedule: Schedule, generator: torch.Generator) -> torch.Tensor:
    """x_t by running the sequential chain from x_0 for t steps (fresh eps_s at every step)."""
    x = x0
    for s in range(1, t + 1):
        x = q_step(x, s, torch.randn(x.shape, generator=generator, dtype=x.dtype), schedule)
    return x


def timestep_noise(shape: tuple[int, ...], t: int, seed: int, dtype=torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
    """eps for timestep t, from a generator seeded by (seed, t): the grid and the MSE table share it.

    ``out`` (of ``shape``) receives the draw instead of a new tensor.
    """
    return torch.randn(shape, generator=make_generator(seed, f"forward/t={t}"), dtype=dtype, out=out)


def noisy_images(x0: torch.Tensor, timesteps: list[int], schedule: Schedule, seed: int) -> torch.Tensor:
    """x_t of every image at each timestep, shape (len(timesteps), N, C, H, W)."""
    return torch.stack([q_sample(x0, t, timestep_noise(tuple(x0.shape), t, seed), schedule) for t in timesteps])


def noise_statistics(x0: torch.Tensor, timesteps: list[int], seed: int, workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(<x_0, eps_t>/D, <eps_t, eps_t>/D) per timestep and image, each (len(timesteps), N) float64.

    eps_t is :func:`timestep_noise` of each t (shape of x0: (N, C, H, W), D = C*H*W). Every timestep
    has its own generator, so the draws are independent of one another and of the order they are
    made in: each t is drawn and reduced on a thread of a pool (torch releases the GIL; the ~1 MB
    draw stays in cache between drawing and reducing). ``workers`` defaults to torch's thread count.
    """
    N = x0.shape[0]
    flat = x0.reshape(N, -1).to(torch.float32)  # (N, D)
    D = flat.shape[-1]
    shape = tuple(x0.shape)
    cross = torch.empty(len(timesteps), N, dtype=torch.float64)
    sq = torch.empty(len(timesteps), N, dtype=torch.float64)
    local = threading.local()

    def one(i: int) -> None:
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = torch.empty(shape, dtype=torch.float32)
        timestep_noise(shape, timesteps[i], seed, out=buf)
        eps = buf.reshape(N, -1)  # (N, D)
        # torch's sum reduces in cascades (error ~1e-7 relative, where a dot product's running sum is ~1e-5)
        cross[i] = (eps * flat).sum(1, dtype=torch.float64) / D
        sq[i] = eps.square().sum(1, dtype=torch.float64) / D

    workers = max(1, int(workers or torch.get_num_threads()))
    if workers == 1:
        for i in range(len(timesteps)):
            one(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(len(timesteps))))
    return cross, sq


def mse_per_timestep(x0: torch.Tensor, t_max: int, schedule: Schedule, seed: int, workers: int | None = None) -> torch.Tensor:
    """Empirical MSE(x_t, x_0) per image for t = 0..t_max, shape (t_max + 1, N).

    With a_t = sqrt(abar_t) - 1 and b_t = sqrt(1 - abar_t), x_t - x_0 = a_t x_0 + b_t eps_t, so

        MSE_t = a_t^2 <x_0, x_0>/D + 2 a_t b_t <x_0, eps_t>/D + b_t^2 <eps_t, eps_t>/D,

    which is the mean of the materialised (x_t - x_0)^2 up to rounding, computed from two inner
    products of each eps_t instead of building x_t. Each timestep's noise comes from its own seeded
    generator (the grid uses the same draws), so the values do not depend on how the draws are
    scheduled. Drawing the noise is most of the time (see ``bench/bench_forward.py``); the draws
    run on ``workers`` threads (:func:`noise_statistics`).
    """
    N = x0.shape[0]
    flat = x0.reshape(N, -1).double()
    m2 = flat.pow(2).mean(1)  # (N,)
    a = (schedule.alpha_bars[: t_max + 1].sqrt() - 1.0).unsqueeze(1)  # float64, (t_max + 1, 1)
    b = (1.0 - schedule.alpha_bars[: t_max + 1]).sqrt().unsqueeze(1)
    cross, sq = noise_statistics(x0, list(range(t_max + 1)), seed, workers)
    return a**2 * m2 + 2 * a * b * cross + b**2 * sq


def expected_mse(x0: torch.Tensor, alpha_bars: torch.Tensor) -> torch.Tensor:
    """E[MSE(x_t, x_0)] = (1 - sqrt(abar_t))^2 mean(x_0^2) + (1 - abar_t), per t and image.

    Follows from x_t - x_0 = (sqrt(abar_t) - 1) x_0 + sqrt(1 - abar_t) eps with E[eps] = 0 and
    E[eps^2] = 1. ``alpha_bars`` shape (K,), x0 (N, ...); returns (K, N) float64.
    """
    m2 = x0.double().pow(2).flatten(1).mean(dim=1)  # (N,)
    ab = alpha_bars.double().unsqueeze(1)  # (K, 1)
    return (1.0 - ab.sqrt()) ** 2 * m2.unsqueeze(0) + (1.0 - ab)


def mse_table(x0: torch.Tensor, names: list[str], t_max: int, schedule: Schedule, seed: int) -> pd.DataFrame:
    """Per-timestep table: t, one measured-MSE column per image, mean, and expected values."""
    measured = mse_per_timestep(x0, t_max, schedule, seed)
    expected = expected_mse(x0, schedule.alpha_bars[: t_max + 1])
    df = pd.DataFrame({"t": range(t_max + 1)})
    for i, name in enumerate(names):
        df[name] = measured[:, i].numpy()
    df["mean"] = measured.mean(dim=1).numpy()
    for i, name in enumerate(names):
        df[f"expected_{name}"] = expected[:, i].numpy()
    df["expected_mean"] = expected.mean(dim=1).numpy()
    return df


def posterior_mean_x0(x_t: torch.Tensor, x0: torch.Tensor, t: int, schedule: Schedule) -> torch.Tensor:
    """mu_tilde_t(x_t, x_0) (eq:posterior-mean), any shape; t >= 1.

    mu = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t.
    """
    ab, ab_prev, beta, alpha = (schedule.alpha_bars[t], schedule.alpha_bars[t - 1], schedule.betas[t], schedule.alphas[t])
    return ab_prev.sqrt() * beta / (1 - ab) * x0 + alpha.sqrt() * (1 - ab_prev) / (1 - ab) * x_t


def posterior_mean_eps(x_t: torch.Tensor, eps: torch.Tensor, t: int, schedule: Schedule) -> torch.Tensor:
    """mu_tilde_t in terms of the noise (eq:posterior-mean-eps): (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t)."""
    ab, beta, alpha = schedule.alpha_bars[t], schedule.betas[t], schedule.alphas[t]
    return (x_t - beta / (1 - ab).sqrt() * eps) / alpha.sqrt()


def mu_theta(x_t: torch.Tensor, eps_pred: torch.Tensor, t: int, schedule: Schedule) -> torch.Tensor:
    """Reverse-process mean from a noise prediction (eq:mu-theta): eq:posterior-mean-eps with eps_theta for eps."""
    return posterior_mean_eps(x_t, eps_pred, t, schedule)
