"""DDIM sampling (Song, Meng & Ermon 2021) and DDPM ancestral sampling from one fixed x_T.

Timesteps follow :mod:`schedules`: ``t = 0`` is clean, ``alpha_bars[t]`` is indexed by t, and a
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
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .io import atomic_path, make_generator, write_text
from .schedules import Schedule

log = logging.getLogger(__name__)

SKIP_TYPES = ("uniform", "quadratic")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


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
    """The network as a function (x_t (B,C,H,W), t int in 1..T) -> output (B,C,H,W)."""

    def f(x: torch.Tensor, t: int) -> torch.Tensor:
        k = torch.full((x.shape[0],), t - 1, dtype=torch.long, device=x.device)  # diffusers k = t - 1
        return unet(x, k).sample

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
    progress: bool = False,
) -> torch.Tensor:
    """Run DDIM from x_T (B, C, H, W) with ``num_steps`` network evaluations; returns x_0 (B, C, H, W).

    The timestep pairs (t, t') are consecutive entries of :func:`select_timesteps` followed by
    t' = 0. With eta > 0 the noise z is drawn from ``generator`` (required then), one draw of
    shape x_T.shape per step, on the CPU, so results do not depend on the device's RNG.
    """
    if eta > 0 and generator is None:
        raise ValueError("ddim_sample: eta > 0 needs a generator (randomness is always explicit)")
    f = _eps_model(unet)
    ts = select_timesteps(num_steps, schedule.T, skip_type)
    prevs = ts[1:] + [0]
    ab = schedule.alpha_bars
    x = x_T
    for t, t_prev in _progress(list(zip(ts, prevs)), f"DDIM {num_steps}", progress):
        out = f(x, t)
        noise = None
        if eta > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
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
    generators: dict[str, torch.Generator],
    skip_type: str = "uniform",
    clip_sample: bool = False,
    prediction_type: str = "epsilon",
) -> dict[str, torch.Tensor]:
    """Several samplers of DDIM's Table 1 on one sub-sequence tau, all from the same x_T (B, C, H, W).

    ``variants``: ``"eta=<value>"`` (DDIM eq. 12 with sigma of eq. 16) or ``"sigma_hat"`` (the
    strided DDPM step with sigma^2 = 1 - abar_t / abar_{t'}, see :func:`ddpm_posterior_step`).
    One UNet call per step serves every variant (their x_t are stacked into one batch); each
    variant draws its noise z from its own generator, one x_T-shaped CPU draw per step that
    needs noise, so a variant's samples do not depend on which others run beside it.
    Returns {variant: x_0 (B, C, H, W)}.
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
                noise = torch.randn(x_T.shape, generator=generators[v], dtype=x_T.dtype).to(x_T.device) if t_prev > 0 else None
                xs[v] = ddpm_posterior_step(o, xs[v], a_t, a_prev, variance="large", clip_sample=clip_sample,
                                            prediction_type=prediction_type, noise=noise)
            else:
                noise = torch.randn(x_T.shape, generator=generators[v], dtype=x_T.dtype).to(x_T.device) if etas[v] > 0 else None
                xs[v], _ = ddim_step(o, xs[v], a_t, a_prev, eta=etas[v], clip_sample=clip_sample,
                                     prediction_type=prediction_type, noise=noise)
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
    generator: torch.Generator,
    clip_sample: bool = False,
    prediction_type: str = "epsilon",
    progress: bool = False,
) -> torch.Tensor:
    """DDPM ancestral sampling (Algorithm 2) over all T steps from x_T (B, C, H, W) -> x_0.

    z is drawn from ``generator`` on the CPU, one x_T-shaped draw for each t = T..2.
    """
    f = _eps_model(unet)
    x = x_T
    for t in _progress(range(schedule.T, 0, -1), f"DDPM {schedule.T}", progress):
        out = f(x, t)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) if t > 1 else None
        x = ddpm_step(out, x, t, schedule, clip_sample=clip_sample, prediction_type=prediction_type, noise=noise)
    return x


# --------------------------------------------------------------------------------------------
# model loading
# --------------------------------------------------------------------------------------------
def model_source(config: dict) -> str:
    """The model folder (trained here) or hub id / folder (pretrained) the DDIM stage samples from."""
    m = config["ddim"]["model"]
    return "results/ddim/model" if m["source"] == "train" else str(m["pretrained"])


def load_model(where: str, device: torch.device | str = "cpu"):
    """(unet in eval mode on ``device``, Schedule, prediction_type) from a model folder or hub id.

    The schedule comes from the folder's scheduler config (any diffusers scheduler class), so a
    pretrained model is sampled with the betas it was trained with.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    from .models import load_pretrained

    key = "ddim.model.pretrained"
    unet = load_pretrained(UNet2DModel, where, config_key=key).to(device).eval()
    try:
        sched = load_pretrained(DDPMScheduler, where, config_key=key)
    except Exception:  # noqa: BLE001 - pipeline layout: scheduler/ subfolder
        sched = load_pretrained(DDPMScheduler, where, config_key=key, subfolder="scheduler")
    schedule = Schedule.from_betas(sched.betas.to(torch.float64))
    prediction_type = sched.config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"{key}: model predicts {prediction_type!r}; supported: {', '.join(PREDICTION_TYPES)}")
    return unet, schedule, prediction_type


def check_step_counts(step_counts, T: int) -> None:
    """Every DDIM step count must be <= the model's training T (error names ddim.step_counts)."""
    bad = [int(s) for s in step_counts if int(s) > T or int(s) < 1]
    if bad:
        raise ValueError(
            f"ddim.step_counts: {bad} not in 1..{T}: the model was trained with T = {T} timesteps, "
            f"so DDIM can take at most {T} steps; remove or lower these step counts"
        )


# --------------------------------------------------------------------------------------------
# rule entry points
# --------------------------------------------------------------------------------------------
def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Save named tensors (float32, CPU) as safetensors with JSON metadata, atomically.

    The metadata goes into a single header entry (``meta``, keys sorted): safetensors writes a
    metadata map in hash order, so several entries would give different bytes on each run.
    """
    from safetensors.torch import save_file

    meta = {"meta": json.dumps(metadata or {}, sort_keys=True)}
    data = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sorted(tensors.items())}
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata=meta)


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """({name: tensor}, metadata) saved by :func:`save_tensors`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, json.loads((fh.metadata() or {}).get("meta", "{}"))


def save_tensor(path: str | Path, tensor: torch.Tensor, metadata: dict | None = None) -> None:
    """Save one tensor (key ``x``) with :func:`save_tensors`."""
    save_tensors(path, {"x": tensor}, metadata)


def load_tensor(path: str | Path) -> tuple[torch.Tensor, dict]:
    """(tensor, metadata) saved by :func:`save_tensor`."""
    tensors, meta = load_tensors(path)
    return tensors["x"], meta


def image_shape(unet) -> tuple[int, int, int]:
    """(C, H, W) of the images a diffusers UNet2DModel generates (``sample_size`` an int or a pair)."""
    c = unet.config
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    return int(c.in_channels), int(size), int(size)


def tensor_sha256(x: torch.Tensor) -> str:
    """SHA-256 of a tensor's float32 bytes: identifies the x_T a sample was drawn from."""
    import hashlib

    return hashlib.sha256(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


def make_x_T(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The one x_T ~ N(0, I) of the comparison, float32 on the CPU, from generator ("ddim_x_T")."""
    return torch.randn(shape, generator=make_generator(seed, "ddim_x_T"), dtype=torch.float32)


def run_x_T(out_path: str | Path, config: dict) -> None:
    """The ``ddim_x_T`` rule: draw x_T (num_samples, C, H, W) for the model's image shape."""
    unet, schedule, _ = load_model(model_source(config), "cpu")
    check_step_counts(config["ddim"]["step_counts"], schedule.T)
    shape = (int(config["ddim"]["num_samples"]), *image_shape(unet))
    x_T = make_x_T(shape, int(config["seed"]))
    log.info("x_T: shape %s, mean %.4f, std %.4f", shape, float(x_T.mean()), float(x_T.std()))
    save_tensor(out_path, x_T, {"seed": int(config["seed"]), "name": "ddim_x_T"})


def _sample_batches(fn, x_T: torch.Tensor, device, batch_size: int | None) -> torch.Tensor:
    xs = [x_T] if not batch_size else list(x_T.split(batch_size))
    return torch.cat([fn(x.to(device)).to("cpu", torch.float32) for x in xs])


def run_sampling(
    x_T_path: str | Path,
    out_path: str | Path,
    timing_path: str | Path,
    config: dict,
    *,
    sampler: str,
    num_steps: int | None = None,
) -> None:
    """The ``ddim_sample`` / ``ddim_ddpm_baseline`` rules: sample from the saved x_T.

    ``sampler`` is ``ddim`` (with ``num_steps``) or ``ddpm`` (all T steps). Writes the samples
    (safetensors, deterministic) and, separately, the wall time (JSON; times vary run to run).
    """
    from .models import resolve_device

    dcfg = config["ddim"]
    device = resolve_device(config.get("device", "auto"))
    unet, schedule, prediction_type = load_model(model_source(config), device)
    check_step_counts(dcfg["step_counts"], schedule.T)
    x_T, _ = load_tensor(x_T_path)
    clip = bool(dcfg.get("clip_sample", False))
    eta = float(dcfg.get("eta", 0.0))
    skip = str(dcfg.get("skip_type", "uniform"))
    seed = int(config["seed"])
    if sampler == "ddim":
        S = int(num_steps)
        gen = make_generator(seed, f"ddim_eta_noise_{S}")
        nfe = len(select_timesteps(S, schedule.T, skip))

        def fn(x):
            return ddim_sample(unet, x, schedule, S, eta=eta, skip_type=skip, clip_sample=clip,
                               prediction_type=prediction_type, generator=gen, progress=True)

        meta = {"sampler": "ddim", "steps": S, "nfe": nfe, "eta": eta, "skip_type": skip, "clip_sample": clip}
    elif sampler == "ddpm":
        gen = make_generator(seed, "ddpm_baseline_noise")

        def fn(x):
            return ddpm_sample(unet, x, schedule, generator=gen, clip_sample=clip,
                               prediction_type=prediction_type, progress=True)

        meta = {"sampler": "ddpm", "steps": schedule.T, "nfe": schedule.T, "eta": 1.0, "skip_type": "all", "clip_sample": clip}
    else:
        raise ValueError(f"unknown sampler {sampler!r} (ddim or ddpm)")
    meta["x_T_sha256"] = tensor_sha256(x_T)
    log.info("%s: %s on %s, %d samples", sampler, meta, device, x_T.shape[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    x0 = _sample_batches(fn, x_T, device, dcfg.get("batch_size"))
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    log.info("%s %d steps: %.2f s (%.4f s per image)", sampler, meta["steps"], wall, wall / x_T.shape[0])
    save_tensor(out_path, x0, meta)
    timing = {**meta, "wall_s": wall, "s_per_image": wall / x_T.shape[0], "num_samples": int(x_T.shape[0]),
              "device": str(device), "threads": torch.get_num_threads()}
    write_text(timing_path, json.dumps(timing, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------
# figures, metrics and the report section
# --------------------------------------------------------------------------------------------
def _grid_figure(rows: list[tuple[str, torch.Tensor]], max_cols: int = 16):
    """Rows = samplers, columns = samples (same x_T per column). Images (N, C, H, W) in [-1, 1]."""
    from . import figures  # noqa: F401 - the project's matplotlib style, the same in every process
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import to_uint8

    n = min(max_cols, rows[0][1].shape[0])
    h = rows[0][1].shape[-1]
    fig, axes = plt.subplots(len(rows), 1, figsize=(0.55 * n + 1.0, 0.6 * len(rows) + 0.3), dpi=150, squeeze=False)
    for ax, (name, x) in zip(axes[:, 0], rows):
        tiles = [to_uint8(img) for img in x[:n]]
        pad = np.full((tiles[0].shape[0], 1) + tiles[0].shape[2:], 255, dtype=np.uint8)
        strip = np.concatenate([t for tile in tiles for t in (tile, pad)][:-1], axis=1)
        ax.imshow(strip, cmap="gray" if strip.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([(h + 1) * i + (h - 1) / 2 for i in range(n)])
        ax.set_xticklabels([str(i) for i in range(n)] if ax is axes[-1, 0] else [], fontsize=6)
        ax.tick_params(length=0)
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        for s in ax.spines.values():
            s.set_visible(False)
    axes[-1, 0].set_xlabel("sample (same x_T in every row)", fontsize=7)
    fig.tight_layout(h_pad=0.2)
    return fig


def _convergence_figure(df, ref_label: str):
    from . import figures  # noqa: F401 - the project's matplotlib style, the same in every process
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dd = df[(df["sampler"] == "ddim") & (df["label"] != ref_label)]
    dp = df[df["sampler"] == "ddpm"]
    cols = [("mse", "MSE to reference", True), ("ssim", "SSIM to reference", False)]
    if "recognisability" in df.columns:
        cols.append(("recognisability", "recognisability (mean top-class p)", False))
    fig, axes = plt.subplots(1, len(cols), figsize=(3.3 * len(cols), 2.9), dpi=150, squeeze=False)
    for ax, (col, title, logy) in zip(axes[0], cols):
        sub = dd if col != "recognisability" else df[df["sampler"] == "ddim"]
        ax.plot(sub["steps"], sub[col], "o-", color="C0", label="DDIM (eta from config)")
        if len(dp):
            ax.axhline(float(dp[col].iloc[0]), color="C3", ls="--", lw=1, label=f"DDPM {int(dp['steps'].iloc[0])} steps")
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("sampling steps")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(frameon=False, fontsize=7)
    fig.suptitle(f"Convergence to the {ref_label.replace('_', ' ')}-step sample from the same x_T", fontsize=9)
    fig.tight_layout()
    return fig


def run_figures(
    samples: dict[str, str],
    timings: dict[str, str],
    *,
    grid_png: str,
    convergence_png: str,
    metrics_csv: str,
    timing_csv: str,
    png_dir: str,
    config: dict,
    classifier_csv: str | None = None,
) -> None:
    """The ``ddim_figures`` rule: grid, per-sample PNGs, distance/recognisability metrics, timing.

    ``samples`` / ``timings`` map labels (``ddim_50``, ``ddpm_1000``) to the files written by
    :func:`run_sampling`. The reference for the distances is the DDIM run with the most steps.
    """
    import pandas as pd

    from . import metrics as M
    from .io import save_figure, save_png, write_csv

    runs = []
    for label, path in samples.items():
        x, meta = load_tensor(path)
        runs.append((label, x, meta))
    ddim_runs = sorted([r for r in runs if r[2]["sampler"] == "ddim"], key=lambda r: r[2]["steps"])
    other = [r for r in runs if r[2]["sampler"] != "ddim"]
    if not ddim_runs:
        raise ValueError("ddim.step_counts is empty: nothing to compare")
    ordered = ddim_runs + other
    hashes = {r[2].get("x_T_sha256") for r in ordered}
    if len(hashes) != 1:
        raise ValueError(f"the samplers started from different x_T ({len(hashes)} distinct hashes): rerun ddim_x_T and the samplers")
    ref_label, ref_x, _ = ddim_runs[-1]

    clf = None
    if classifier_csv is not None:
        from . import digits

        clf = digits.train_classifier(int(ref_x.shape[-1]), int(config["seed"]))
        log.info("recognisability classifier: accuracy %.4f on %d held-out digits", clf.test_accuracy, clf.n_test)
        write_csv(classifier_csv, pd.DataFrame([{
            "classifier": "logistic regression on 8x8 average-pooled images",
            "n_train": clf.n_train, "n_test": clf.n_test, "test_accuracy": clf.test_accuracy,
        }]))
        real = digits.digits_split(int(ref_x.shape[-1]), int(config["seed"]))["test"][0]  # every run has x_T's shape
        real_recognisability = clf.recognisability(real)["recognisability"]

    rows = []
    for label, x, meta in ordered:
        d = M.pairwise(x, ref_x)
        row = {
            "label": label, "sampler": meta["sampler"], "steps": int(meta["steps"]), "nfe": int(meta["nfe"]),
            "eta": float(meta["eta"]), "skip_type": meta["skip_type"], "clip_sample": bool(meta["clip_sample"]),
            "reference": ref_label, "mse": float(d["mse"].mean()), "psnr": float(np.mean(d["psnr"])),
            "ssim": float(d["ssim"].mean()), "ssim_min": float(d["ssim"].min()),
            "max_abs_pixel": float(x.abs().max()),
        }
        if clf is not None:
            row.update(clf.recognisability(x))
            row["real_recognisability"] = real_recognisability
        rows.append(row)
        for i, img in enumerate(x):
            save_png(Path(png_dir) / f"{label}_{i:02d}.png", img)
    df = pd.DataFrame(rows)
    write_csv(metrics_csv, df)

    tim = []
    for label, path in timings.items():
        t = json.loads(Path(path).read_text())
        tim.append({"label": label, "sampler": t["sampler"], "steps": t["steps"], "nfe": t["nfe"],
                    "wall_s": t["wall_s"], "s_per_image": t["s_per_image"], "device": t["device"], "threads": t["threads"]})
    tdf = pd.DataFrame(tim).set_index("label").loc[[r[0] for r in ordered]].reset_index()
    write_csv(timing_csv, tdf)

    fig = _grid_figure([(label.replace("_", " "), x) for label, x, _ in ordered])
    save_figure(grid_png, fig)
    fig = _convergence_figure(df, ref_label)
    save_figure(convergence_png, fig)
    import matplotlib.pyplot as plt

    plt.close("all")


def _fmt_row(r: dict) -> dict:
    out = {"sampler": f"{r['sampler'].upper()} {int(r['steps'])}", "steps (NFE)": int(r["nfe"])}
    is_ref = r["label"] == r["reference"]
    out["MSE to ref."] = "reference" if is_ref else float(r["mse"])
    out["PSNR (dB)"] = "reference" if is_ref else float(r["psnr"])
    out["SSIM"] = "reference" if is_ref else float(r["ssim"])
    if "recognisability" in r and r["recognisability"] == r["recognisability"]:
        out["recognisability"] = float(r["recognisability"])
        out["confident (p >= 0.9)"] = float(r["confident_fraction"])
    if "wall_s" in r:
        out["wall time (s)"] = float(r["wall_s"])
        out["s / image"] = float(r["s_per_image"])
    return out


def report_context(files: dict[str, str], config: dict) -> dict:
    """Plain data for ``report/templates/sections/ddim.html.j2`` (numbers read from results).

    ``files``: grid, convergence, metrics, timing, and for the trained model classifier,
    loss_plot, loss_csv.
    """
    import pandas as pd

    from . import ddim_experiments as E

    dcfg = config["ddim"]
    m = pd.read_csv(files["metrics"])
    t = pd.read_csv(files["timing"])
    merged = m.merge(t[["label", "wall_s", "s_per_image", "device", "threads"]], on="label", how="left")
    recs = merged.to_dict("records")
    ddim_rows = merged[merged["sampler"] == "ddim"].sort_values("steps")
    ref_label = str(m["reference"].iloc[0])
    ref = merged[merged["label"] == ref_label].iloc[0]
    non_ref = ddim_rows[ddim_rows["label"] != ref_label]
    fewest = ddim_rows.iloc[0]
    ctx: dict = {
        "grid": files["grid"],
        "convergence": files["convergence"],
        "rows": [_fmt_row(r) for r in recs],
        "source": dcfg["model"]["source"],
        "pretrained": dcfg["model"]["pretrained"],
        "step_counts": [int(s) for s in ddim_rows["steps"]],
        "num_samples": int(dcfg["num_samples"]),
        "eta": float(dcfg["eta"]),
        "skip_type": str(dcfg["skip_type"]),
        "clip_sample": bool(dcfg["clip_sample"]),
        "seed": int(config["seed"]),
        "reference_steps": int(ref["steps"]),
        "device": str(ref["device"]),
        "threads": int(ref["threads"]),
        "fewest_steps": int(fewest["steps"]),
        "fewest_mse": float(fewest["mse"]) if fewest["label"] != ref_label else 0.0,
        "fewest_ssim": float(fewest["ssim"]) if fewest["label"] != ref_label else 1.0,
        "speedup_fewest": float(ref["wall_s"] / fewest["wall_s"]) if fewest["wall_s"] > 0 else float("nan"),
        "ref_s_per_image": float(ref["s_per_image"]),
        "fewest_s_per_image": float(fewest["s_per_image"]),
    }
    # every key the template tests exists (the report renders with StrictUndefined)
    ctx.update({"ddpm": None, "classifier": None, "loss_plot": None, "train": None})
    good = non_ref[non_ref["ssim"] >= 0.9]
    ctx["steps_ssim_09"] = int(good["steps"].min()) if len(good) else None
    dp = merged[merged["sampler"] == "ddpm"]
    if len(dp):
        ctx["ddpm"] = {"steps": int(dp["steps"].iloc[0]), "mse": float(dp["mse"].iloc[0]), "ssim": float(dp["ssim"].iloc[0]),
                       "s_per_image": float(dp["s_per_image"].iloc[0]), "recognisability": None}
        if "recognisability" in dp.columns:
            ctx["ddpm"]["recognisability"] = float(dp["recognisability"].iloc[0])
    if "recognisability" in merged.columns and files.get("classifier"):
        c = pd.read_csv(files["classifier"]).iloc[0]
        ctx["classifier"] = {"accuracy": float(c["test_accuracy"]), "n_train": int(c["n_train"]), "n_test": int(c["n_test"])}
        ctx["recog"] = {int(r["steps"]): float(r["recognisability"]) for _, r in ddim_rows.iterrows()}
        ctx["recog_fewest"] = float(fewest["recognisability"])
        ctx["recog_ref"] = float(ref["recognisability"])
        ctx["recog_real"] = float(ref["real_recognisability"])
    if files.get("loss_plot"):
        ctx["loss_plot"] = files["loss_plot"]
    if files.get("loss_csv"):
        lc = pd.read_csv(files["loss_csv"])
        tr = dcfg["train"]
        ctx["train"] = {"steps": int(len(lc)), "first_loss": float(lc["loss_smoothed"].iloc[min(len(lc) - 1, 49)]),
                        "final_loss": float(lc["loss_smoothed"].iloc[-1]),
                        "image_size": int(tr["image_size"]), "channels": list(tr["channels"]),
                        "batch_size": int(tr["batch_size"]), "learning_rate": float(tr["learning_rate"]),
                        "ema_decay": float(tr["ema_decay"]), "shipped": not bool(dcfg.get("retrain", True)),
                        "weights": str(dcfg.get("weights", ""))}
    # every DDIM sample's largest |pixel| before display clamping (the data range is [-1, 1])
    ctx["max_abs_pixel"] = float(m.loc[m["sampler"] == "ddim", "max_abs_pixel"].max()) if "max_abs_pixel" in m.columns else None
    ctx["pixel_bound"] = E.PIXEL_BOUND
    ctx.update(experiments_context(files, ctx))
    return ctx


def experiments_context(files: dict[str, str], ctx: dict) -> dict:
    """The DDIM paper's experiments for the report: the quality table beside the paper's, the
    claims chosen from the numbers (see :mod:`ddim_experiments` for thresholds), reconstruction."""
    import pandas as pd

    from . import ddim_experiments as E
    from .report import fmt

    out: dict = {"quality": None, "recon": None, "interp": files.get("interp_png")}
    if files.get("quality_csv"):
        q = pd.read_csv(files["quality_csv"])
        pairs = pd.read_csv(files["quality_pairs"])
        cells = q[q["variant"] != "real digits"]
        variants = list(dict.fromkeys(cells["variant"]))
        steps = sorted(int(s) for s in cells["steps"].unique())
        rows = []
        for v in variants:
            row = {"sampler": v}
            for s_ in steps:
                c = cells[(cells["variant"] == v) & (cells["steps"] == s_)].iloc[0]
                row[f"S = {s_}"] = f"{fmt(c['fd'], 3)} ± {fmt(c['fd_boot_std'], 2)}"
            rows.append(row)
        paper_rows = []
        for v in variants:
            pv = E.PAPER_FID.get(v)
            if pv:
                d = dict(zip(E.PAPER_STEPS, pv))
                paper_rows.append({"sampler": v, **{f"S = {s_}": (d[s_] if s_ in d else "n/a") for s_ in steps}})
        real = q[q["variant"] == "real digits"]
        ddpm_recog = ctx["ddpm"]["recognisability"] if ctx.get("ddpm") else None
        eta_label = E.variant_label(ctx["eta"])
        out["quality"] = {
            "png": files["quality_png"], "rows": rows, "paper_rows": paper_rows, "steps": steps,
            "num_samples": int(cells["num_samples"].iloc[0]), "claims": E.ordering_claims(q),
            "resolved": E.neighbours_resolved(pairs), "goals": E.quality_goals(q, eta_label, ddpm_recog),
            "eta_label": eta_label,
            "etas": [f"{e:g}" for e in (float(v[4:]) for v in variants if v.startswith("eta="))],
            "sigma_hat": "sigma_hat" in variants,
            "real_fd": float(real["fd"].iloc[0]) if len(real) else None,
            "real_err": float(real["fd_boot_std"].iloc[0]) if len(real) else None,
            "conf_rows": [{"sampler": v, **{f"S = {s_}": float(cells[(cells["variant"] == v) & (cells["steps"] == s_)]["confident_fraction"].iloc[0]) for s_ in steps}} for v in variants],
        }
    if files.get("recon_csv"):
        r = pd.read_csv(files["recon_csv"]).sort_values("steps")
        mse = r["mse"].tolist()
        med = r["mse_median"].tolist() if "mse_median" in r.columns else mse
        out["recon"] = {
            "png": files["recon_png"],
            "rows": [{"S": int(x["steps"]), "MSE, mean": float(x["mse"]), "MSE, median": float(x.get("mse_median", x["mse"])),
                      f"failed (MSE > {E.RECON_FAIL_MSE:g})": int(x.get("failed", 0)), "PSNR (dB), mean": float(x["psnr"]),
                      "paper CIFAR-10 MSE": float(x["paper_cifar10_mse"])} for _, x in r.iterrows()],
            "num_images": int(r["num_images"].iloc[0]),
            "monotone": all(a > b for a, b in zip(mse, mse[1:])),
            "median_monotone": all(a > b for a, b in zip(med, med[1:])),
            "first": {"steps": int(r["steps"].iloc[0]), "mse": float(mse[0]), "median": float(med[0])},
            "last": {"steps": int(r["steps"].iloc[-1]), "mse": float(mse[-1]), "median": float(med[-1]),
                     "failed": int(r["failed"].iloc[-1]) if "failed" in r.columns else 0},
            "fail_mse": E.RECON_FAIL_MSE,
        }
    return out
