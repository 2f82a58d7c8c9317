"""DDIM sampling (Song, Meng & Ermon 2021) and DDPM ancestral sampling from one fixed x_T.

Timesteps follow :mod:`diffusion_report.core.schedules`: ``t = 0`` is clean, ``alpha_bars[t]`` is indexed by t, and a
diffusers UNet is called with its timestep ``k = t - 1``. The generalised update (DDIM eq. 12):

    x_{t'} = sqrt(abar_{t'}) * x0_hat                              "predicted x_0"
           + sqrt(1 - abar_{t'} - sigma_t^2) * eps_theta(x_t, t)   "direction pointing to x_t"
           + sigma_t * z,                                          z ~ N(0, I)

    x0_hat = (x_t - sqrt(1 - abar_t) * eps_theta(x_t, t)) / sqrt(abar_t)                    (eq. 9)
    sigma_t = eta * sqrt((1 - abar_{t'}) / (1 - abar_t)) * sqrt(1 - abar_t / abar_{t'})     (eq. 16)

for consecutive timesteps t > t' of a sub-sequence tau of 1..T (sec. 4.2), ending at t' = 0
(abar_0 = 1). eta = 0 is the deterministic DDIM; eta = 1 over all T steps is DDPM.

Timestep selection (``skip_type``), as in ermongroup/ddim's ``runners/diffusion.py``:

* ``uniform``   tau_i = i * (T // S) + 1, i = 0..S-1 (diffusers' ``timestep_spacing="leading"``);
* ``quadratic`` tau_i = floor((i * sqrt(0.8 T) / (S - 1))^2) + 1, duplicates removed.


The noise z of a stochastic step t -> t' comes from a *noise sampler*, a callable ``(t, t') -> z`` of x_T's shape:
:func:`independent_noise` draws one fresh tensor per step (the order of diffusers' schedulers);
:class:`BrownianNoise` takes z from one Brownian path on the timestep grid 0..T, so samplers with
different S (and different eta) that share the path share their randomness (common random numbers),
while every z is still exactly N(0, I) and independent of the other steps of its own chain.

Every sampler takes ``(unet, scheduler-free schedule, x_T, ...)`` and returns x_0 of x_T's shape
(B, C, H, W); the model is only called, never loaded, here (see :mod:`diffusion_report.models`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import numpy as np
import torch

from diffusion_report.core.schedules import Schedule

SKIP_TYPES = ("uniform", "quadratic")


PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


# --------------------------------------------------------------------------------------------
# noise samplers: (t, t') -> z for the step t -> t', x_T's shape, on the CPU
# --------------------------------------------------------------------------------------------
NoiseSampler = Callable[[int, int], torch.Tensor]


def independent_noise(generator: torch.Generator, shape, dtype=torch.float32) -> NoiseSampler:
    """One fresh N(0, I) draw of ``shape`` from ``generator`` per call, whatever (t, t') is:
    the draws diffusers' schedulers make with the same generator."""

    def draw(t: int, t_prev: int) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=generator, dtype=dtype)

    return draw


class BrownianNoise:
    """z for a step t -> t' from one Brownian path W on the timestep grid (common random numbers).

    The path's unit increments xi_k = W(k) - W(k - 1) ~ N(0, I), k = T..1, are drawn from
    ``generator`` in that order, each of shape ``shape``; a step t -> t' (t > t') gets

        z = (W(t) - W(t')) / sqrt(t - t') = sum_{k = t'+1..t} xi_k / sqrt(t - t'),

    which is exactly N(0, I), independent of the other (disjoint) steps of the chain. So a sampler's
    law is unchanged, but two samplers that use the same path (same seed) at different S see the
    same randomness: at S = T, z_t = xi_t is the ancestral sampler's draw in order (DDPM drawn from
    ``generator`` directly gives the same bytes), and a coarse step's z is the normalised sum of the
    fine steps' z it spans (the idea of k-diffusion's ``BrownianTreeNoiseSampler``, here on the
    discrete grid, drawn sequentially). Differences between cells of DDIM's Table 1 then carry much
    less sampling noise than with independent draws per cell.

    Steps must be asked for in decreasing, non-overlapping order (t of a call <= t' of the last);
    increments above the first t are drawn and dropped, so the path does not depend on where a
    sampler starts. Asking for the last step again returns the same z, so several samplers run
    side by side (:func:`sample_variants`) can share one path and its draws. ``rows`` returns
    those rows of each z (a batch of a larger x_T: drawing the full shape keeps a sample's noise
    independent of the batch size).
    """

    def __init__(self, generator: torch.Generator, T: int, shape, dtype=torch.float32, rows: slice | None = None):
        self.generator, self.shape, self.dtype, self.rows = generator, tuple(shape), dtype, rows
        self.k = int(T)  # the next increment to draw is xi_k, the interval (k - 1, k]
        self._last: tuple[int, int, torch.Tensor] | None = None

    def _draw(self) -> torch.Tensor:
        self.k -= 1
        return torch.randn(self.shape, generator=self.generator, dtype=self.dtype)

    def __call__(self, t: int, t_prev: int) -> torch.Tensor:
        t, t_prev = int(t), int(t_prev)
        if self._last is not None and self._last[:2] == (t, t_prev):
            return self._last[2]
        if not 0 <= t_prev < t <= self.k:
            raise ValueError(
                f"BrownianNoise: step {t} -> {t_prev} is out of order (steps must decrease and not overlap; "
                f"the path is at t = {self.k})"
            )
        while self.k > t:  # above the sampler's first timestep
            self._draw()
        z = self._draw()
        while self.k > t_prev:
            z = z + self._draw()
        if t - t_prev > 1:
            z = z / math.sqrt(t - t_prev)
        z = z if self.rows is None else z[self.rows]
        self._last = (t, t_prev, z)
        return z


def _noise_for(noise_sampler, generator, x: torch.Tensor, who: str):
    if noise_sampler is not None:
        return noise_sampler
    if generator is None:
        raise ValueError(f"{who}: a stochastic sampler needs a generator or a noise sampler (randomness is always explicit)")
    return independent_noise(generator, x.shape, x.dtype)


# --------------------------------------------------------------------------------------------
# timestep selection
# --------------------------------------------------------------------------------------------
def select_timesteps(num_steps: int, T: int, skip_type: str = "uniform") -> list[int]:
    """Decreasing timesteps tau_S > ... > tau_1 >= 1 (our convention) for an S-step sampler.

    Raises ValueError (naming ``ddim.step_counts``) when S > T: a model trained with T steps has
    no timesteps between them.
    """
    S, T = int(num_steps), int(T)
    if S < 1:
        raise ValueError(f"ddim.step_counts: a step count must be >= 1, got {S}")
    if S > T:
        raise ValueError(
            f"ddim.step_counts: {S} steps is more than the model's {T} training timesteps; use step counts <= {T}"
        )
    if skip_type == "uniform":
        ks = np.arange(0, S) * (T // S)
    elif skip_type == "quadratic":
        ks = np.floor(np.linspace(0.0, math.sqrt(T * 0.8), S) ** 2).astype(np.int64)
        ks = np.unique(ks)  # small gaps near t = 1 round to the same integer for large S
    else:
        raise ValueError(f"ddim.skip_type: {skip_type!r} is not one of {', '.join(SKIP_TYPES)}")
    return [int(k) + 1 for k in ks[::-1]]  # diffusers-style k -> our t = k + 1


# --------------------------------------------------------------------------------------------
# one step
# --------------------------------------------------------------------------------------------
def predict_x0_eps(model_output: torch.Tensor, x_t: torch.Tensor, abar_t: float, prediction_type: str = "epsilon"):
    """(x0_hat, eps_hat) from the network output, shape (B, C, H, W) each (DDIM eq. 9)."""
    a, s = math.sqrt(abar_t), math.sqrt(1.0 - abar_t)
    if prediction_type == "epsilon":
        return (x_t - s * model_output) / a, model_output
    if prediction_type == "sample":
        return model_output, (x_t - a * model_output) / s
    if prediction_type == "v_prediction":
        return a * x_t - s * model_output, a * model_output + s * x_t
    raise ValueError(f"prediction_type {prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")


def ddim_sigma(abar_t: float, abar_prev: float, eta: float) -> float:
    """DDIM eq. 16: sigma_t(eta) = eta * sqrt((1 - abar_{t'})/(1 - abar_t)) * sqrt(1 - abar_t/abar_{t'})."""
    return eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar_t)) * math.sqrt(1.0 - abar_t / abar_prev)


def ddim_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    abar_t: float,
    abar_prev: float,
    *,
    eta: float = 0.0,
    clip_sample: bool = False,
    prediction_type: str = "epsilon",
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update x_t -> x_{t'} (eq. 12). Returns (x_{t'}, x0_hat), both (B, C, H, W).

    1. x0_hat, eps_hat from the model output (eq. 9), optionally clipped to [-1, 1]
       (eps_hat is kept, as in ermongroup/ddim and diffusers' default);
    2. sigma_t from eta (eq. 16);
    3. x_{t'} = sqrt(abar_{t'}) x0_hat + sqrt(1 - abar_{t'} - sigma_t^2) eps_hat + sigma_t z (eq. 12).
    ``noise`` (z) is needed only when eta > 0.
    """
    x0, eps = predict_x0_eps(model_output, x_t, abar_t, prediction_type)  # 1.
    if clip_sample:
        x0 = x0.clamp(-1.0, 1.0)
    sigma = ddim_sigma(abar_t, abar_prev, eta)  # 2.
    x_prev = math.sqrt(abar_prev) * x0 + math.sqrt(max(0.0, 1.0 - abar_prev - sigma**2)) * eps  # 3.
    if sigma > 0:
        if noise is None:
            raise ValueError("ddim_step: eta > 0 needs noise")
        x_prev = x_prev + sigma * noise
    return x_prev, x0


VARIANCES = ("small", "large")


def ddpm_posterior_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    abar_t: float,
    abar_prev: float,
    *,
    variance: str = "small",
    clip_sample: bool = False,
    prediction_type: str = "epsilon",
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One ancestral DDPM step x_t -> x_{t'} over a (possibly strided) pair t > t', shape (B, C, H, W).

    With beta = 1 - abar_t / abar_{t'} (the strided process's beta; beta_t when t' = t - 1):

    1. x0_hat from the model output (DDPM eq. 15), optionally clipped;
    2. posterior mean mu_tilde(x_t, x0_hat) (DDPM eq. 7):
       (sqrt(abar_{t'}) beta x0_hat + sqrt(1 - beta) (1 - abar_{t'}) x_t) / (1 - abar_t);
    3. add sigma z with sigma^2 = beta_tilde = (1 - abar_{t'}) / (1 - abar_t) beta (``small``, the
       posterior variance, "fixed_small"; equal to DDIM's eta = 1) or sigma^2 = beta (``large``,
       "fixed_large": DDIM's sigma-hat of Table 1, as in ermongroup/ddim's ``ddpm_steps``);
       no noise when t' = 0.
    Without clipping and with t' = t - 1, 2. equals DDPM eq. 11.
    """
    if variance not in VARIANCES:
        raise ValueError(f"variance {variance!r} is not one of {', '.join(VARIANCES)}")
    beta = 1.0 - abar_t / abar_prev
    x0, _ = predict_x0_eps(model_output, x_t, abar_t, prediction_type)  # 1.
    if clip_sample:
        x0 = x0.clamp(-1.0, 1.0)
    c0 = math.sqrt(abar_prev) * beta / (1.0 - abar_t)  # 2.
    ct = math.sqrt(1.0 - beta) * (1.0 - abar_prev) / (1.0 - abar_t)
    mean = c0 * x0 + ct * x_t
    if abar_prev < 1.0:  # 3. (abar_0 = 1: the last step adds nothing)
        if noise is None:
            raise ValueError("ddpm_posterior_step: t' > 0 needs noise")
        var = beta if variance == "large" else (1.0 - abar_prev) / (1.0 - abar_t) * beta
        mean = mean + math.sqrt(var) * noise
    return mean


def ddpm_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    t: int,
    schedule: Schedule,
    *,
    clip_sample: bool = False,
    prediction_type: str = "epsilon",
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One ancestral DDPM step x_t -> x_{t-1} (Ho et al. 2020, Algorithm 2) with sigma_t^2 = beta_tilde_t.

    :func:`ddpm_posterior_step` for the consecutive pair (t, t - 1); no noise at t = 1.
    """
    return ddpm_posterior_step(
        model_output, x_t, float(schedule.alpha_bars[t]), float(schedule.alpha_bars[t - 1]), variance="small",
        clip_sample=clip_sample, prediction_type=prediction_type, noise=noise,
    )


# --------------------------------------------------------------------------------------------
# samplers
# --------------------------------------------------------------------------------------------
def _eps_model(unet):
    """The network as a function (x_t (B,C,H,W), t int in 1..T) -> output (B,C,H,W) in x_t's dtype
    (under ``torch.autocast`` the network computes in bf16; the sampler's update stays in x_t's)."""

    def f(x: torch.Tensor, t: int) -> torch.Tensor:
        k = torch.full((x.shape[0],), t - 1, dtype=torch.long, device=x.device)  # diffusers k = t - 1
        return unet(x, k).sample.to(x.dtype)

    return f


def _progress(it, desc: str, progress: bool):
    if not progress:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, file=sys.stderr, mininterval=5.0)


@torch.inference_mode()
def ddim_sample(
    unet,
    x_T: torch.Tensor,
    schedule: Schedule,
    num_steps: int,
    *,
    eta: float = 0.0,
    skip_type: str = "uniform",
    clip_sample: bool = False,
    prediction_type: str = "epsilon",
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run DDIM from x_T (B, C, H, W) with ``num_steps`` network evaluations; returns x_0 (B, C, H, W).

    The timestep pairs (t, t') are consecutive entries of :func:`select_timesteps` followed by
    t' = 0. With eta > 0 the noise z of each step comes from ``noise_sampler`` (t, t') -> z, or,
    without one, from ``generator`` (:func:`independent_noise`); one of them is required then. Noise
    is drawn on the CPU, so results do not depend on the device's RNG.
    """
    noise_of = _noise_for(noise_sampler, generator, x_T, "ddim_sample") if eta > 0 else None
    f = _eps_model(unet)
    ts = select_timesteps(num_steps, schedule.T, skip_type)
    prevs = ts[1:] + [0]
    ab = schedule.alpha_bars
    x = x_T
    for t, t_prev in _progress(list(zip(ts, prevs)), f"DDIM {num_steps}", progress):
        out = f(x, t)
        noise = noise_of(t, t_prev).to(x.device, x.dtype) if noise_of is not None else None
        x, _ = ddim_step(
            out, x, float(ab[t]), float(ab[t_prev]), eta=eta, clip_sample=clip_sample,
            prediction_type=prediction_type, noise=noise,
        )
    return x


@torch.inference_mode()
def sample_variants(
    unet,
    x_T: torch.Tensor,
    schedule: Schedule,
    num_steps: int,
    variants: list[str],
    *,
    noise: dict[str, NoiseSampler],
    skip_type: str = "uniform",
    clip_sample: bool = False,
    prediction_type: str = "epsilon",
) -> dict[str, torch.Tensor]:
    """Several samplers of DDIM's Table 1 on one sub-sequence tau, all from the same x_T (B, C, H, W).

    ``variants``: ``"eta=<value>"`` (DDIM eq. 12 with sigma of eq. 16) or ``"sigma_hat"`` (the
    strided DDPM step with sigma^2 = 1 - abar_t / abar_{t'}, see :func:`ddpm_posterior_step`).
    One UNet call per step serves every variant (their x_t are stacked into one batch); each
    variant takes its noise z from its own noise sampler ``noise[variant]`` ((t, t') -> z, called
    only for the steps that need noise), so a variant's samples do not depend on which others run
    beside it. Returns {variant: x_0 (B, C, H, W)}.
    """
    f = _eps_model(unet)
    ts = select_timesteps(num_steps, schedule.T, skip_type)
    prevs = ts[1:] + [0]
    ab = schedule.alpha_bars
    etas = {}
    for v in variants:
        if v != "sigma_hat":
            if not v.startswith("eta="):
                raise ValueError(f"variant {v!r} is neither 'eta=<value>' nor 'sigma_hat'")
            etas[v] = float(v[4:])
    xs = {v: x_T for v in variants}
    for t, t_prev in zip(ts, prevs):
        out = f(torch.cat([xs[v] for v in variants]), t).split(x_T.shape[0])
        for v, o in zip(variants, out):
            a_t, a_prev = float(ab[t]), float(ab[t_prev])
            if v == "sigma_hat":
                z = noise[v](t, t_prev).to(x_T.device, x_T.dtype) if t_prev > 0 else None
                xs[v] = ddpm_posterior_step(o, xs[v], a_t, a_prev, variance="large", clip_sample=clip_sample,
                                            prediction_type=prediction_type, noise=z)
            else:
                z = noise[v](t, t_prev).to(x_T.device, x_T.dtype) if etas[v] > 0 else None
                xs[v], _ = ddim_step(o, xs[v], a_t, a_prev, eta=etas[v], clip_sample=clip_sample,
                                     prediction_type=prediction_type, noise=z)
    return xs


@torch.inference_mode()
def ddim_invert(
    unet,
    x_0: torch.Tensor,
    schedule: Schedule,
    num_steps: int,
    *,
    skip_type: str = "uniform",
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """Encode x_0 (B, C, H, W) to x_T by running DDIM's ODE forward (DDIM sec. 5.4, "reverse of eq. 14").

    Over the same tau as :func:`ddim_sample`, ascending, with t_0 = 0:

    1. eps from the network at the next timestep tau_{i+1} and the current point x_{tau_i} (the
       network is not defined at t = 0; diffusers' ``DDIMInverseScheduler`` and null-text
       inversion make the same choice);
    2. x0_hat, eps_hat with abar of the current timestep (eq. 9);
    3. x_{tau_{i+1}} = sqrt(abar_{tau_{i+1}}) x0_hat + sqrt(1 - abar_{tau_{i+1}}) eps_hat (eq. 12 with sigma = 0).

    Decoding the result with :func:`ddim_sample` (eta = 0, same S) returns x_0 up to the
    discretisation error of both directions, which shrinks as S grows (DDIM Table 2).
    """
    f = _eps_model(unet)
    ts = select_timesteps(num_steps, schedule.T, skip_type)[::-1]  # ascending tau_1 < ... < tau_S
    currents = [0] + ts[:-1]
    ab = schedule.alpha_bars
    x = x_0
    for t_cur, t_next in zip(currents, ts):
        out = f(x, t_next)  # 1.
        x0, eps = predict_x0_eps(out, x, float(ab[t_cur]), prediction_type)  # 2.
        x = math.sqrt(float(ab[t_next])) * x0 + math.sqrt(1.0 - float(ab[t_next])) * eps  # 3.
    return x


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation between two x_T of shape (C, H, W) (DDIM sec. 5.3, Figure 6):

        theta = arccos(<z0, z1> / (|z0| |z1|)),
        z(alpha) = sin((1 - alpha) theta) / sin(theta) z0 + sin(alpha theta) / sin(theta) z1.
    """
    a, b = z0.to(torch.float64), z1.to(torch.float64)
    cos = (a.flatten() @ b.flatten()) / (a.norm() * b.norm())
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    if float(theta) < 1e-8:
        return ((1 - alpha) * a + alpha * b).to(z0.dtype)
    s = torch.sin(theta)
    return (torch.sin((1 - alpha) * theta) / s * a + torch.sin(alpha * theta) / s * b).to(z0.dtype)


@torch.inference_mode()
def ddpm_sample(
    unet,
    x_T: torch.Tensor,
    schedule: Schedule,
    *,
    generator: torch.Generator | None = None,
    noise_sampler: NoiseSampler | None = None,
    clip_sample: bool = False,
    prediction_type: str = "epsilon",
    progress: bool = False,
) -> torch.Tensor:
    """DDPM ancestral sampling (Algorithm 2) over all T steps from x_T (B, C, H, W) -> x_0.

    z for t = T..2 comes from ``noise_sampler`` (t, t - 1) -> z or, without one, from
    ``generator``, one x_T-shaped CPU draw per step; both give the same bytes for a
    :class:`BrownianNoise` on that generator.
    """
    noise_of = _noise_for(noise_sampler, generator, x_T, "ddpm_sample")
    f = _eps_model(unet)
    x = x_T
    for t in _progress(range(schedule.T, 0, -1), f"DDPM {schedule.T}", progress):
        out = f(x, t)
        noise = noise_of(t, t - 1).to(x.device, x.dtype) if t > 1 else None
        x = ddpm_step(out, x, t, schedule, clip_sample=clip_sample, prediction_type=prediction_type, noise=noise)
    return x


def check_step_counts(step_counts, T: int) -> None:
    """Every DDIM step count must be <= the model's training T (error names ddim.step_counts)."""
    bad = [int(s) for s in step_counts if int(s) > T or int(s) < 1]
    if bad:
        raise ValueError(
            f"ddim.step_counts: {bad} not in 1..{T}: the model was trained with T = {T} timesteps, "
            f"so DDIM can take at most {T} steps; remove or lower these step counts"
        )
