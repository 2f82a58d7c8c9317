"""The digits DDPM and any pretrained unconditional DDPM: one UNet2DModel builder, one loader.

:func:`unet_config`/:func:`build_unet` make the small pixel-space UNet the pipeline trains on the
digits (:mod:`diffusion_report.stages.ddim` rule ``ddim_train``); :func:`load_model` loads that
folder or a pretrained one (``google/ddpm-cifar10-32``: a hub id or a local folder) with its
schedule, through :func:`diffusion_report.models.loading.load_pretrained`.
"""

from __future__ import annotations

import torch

from diffusion_report.core.samplers import PREDICTION_TYPES
from diffusion_report.core.schedules import Schedule
from diffusion_report.io import derive_seed


# --------------------------------------------------------------------------------------------
# model loading
# --------------------------------------------------------------------------------------------
def load_model(where: str, device: torch.device | str = "cpu"):
    """(unet in eval mode on ``device``, Schedule, prediction_type) from a model folder or hub id.

    The schedule comes from the folder's scheduler config (any diffusers scheduler class), so a
    pretrained model is sampled with the betas it was trained with.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    from diffusion_report.models.loading import load_pretrained

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


def image_shape_and_T(where: str) -> tuple[tuple[int, int, int], int]:
    """((C, H, W), training T) of a model folder or hub id, read from its config files: what rule
    ``ddim_x_T`` needs, without loading the weights or importing diffusers."""
    from diffusion_report.models.loading import ModelNotFoundError, read_json

    key = "ddim.model.pretrained"
    cfg = read_json(where, "config.json", config_key=key)
    try:
        sched = read_json(where, "scheduler_config.json", config_key=key)
    except ModelNotFoundError:  # pipeline layout: scheduler/ subfolder
        sched = read_json(where, "scheduler_config.json", config_key=key, subfolder="scheduler")
    size = cfg["sample_size"] if isinstance(cfg["sample_size"], int) else cfg["sample_size"][0]
    return (int(cfg["in_channels"]), int(size), int(size)), int(sched["num_train_timesteps"])


def image_shape(unet) -> tuple[int, int, int]:
    """(C, H, W) of the images a diffusers UNet2DModel generates (``sample_size`` an int or a pair)."""
    c = unet.config
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    return int(c.in_channels), int(size), int(size)


# our schedule names -> diffusers' ``beta_schedule`` (same formulas; checked in the tests)
DIFFUSERS_BETA_SCHEDULE = {
    "linear": "linear",
    "quadratic": "scaled_linear",
    "cosine": "squaredcos_cap_v2",
    "sigmoid": "sigmoid",
}


def _norm_groups(channels: list[int]) -> int:
    """The largest group count of GroupNorm (<= 32) that divides every block width."""
    for g in (32, 16, 8, 4, 2, 1):
        if all(c % g == 0 for c in channels):
            return g
    return 1


def unet_config(image_size: int, channels: list[int], in_channels: int = 1, layers_per_block: int = 1) -> dict:
    """The diffusers ``UNet2DModel`` config of the small digits DDPM.

    One resolution level per entry of ``channels`` (each but the last halves the resolution);
    self-attention only at the lowest resolution, where it is cheap.
    """
    channels = [int(c) for c in channels]
    n = len(channels)
    if n < 1:
        raise ValueError("ddim.train.channels needs at least one block width")
    if image_size % (2 ** (n - 1)) != 0:
        raise ValueError(f"ddim.train.image_size {image_size} is not divisible by 2^{n - 1} (one halving per extra block)")
    down = ["DownBlock2D"] * (n - 1) + ["AttnDownBlock2D"]
    up = ["AttnUpBlock2D"] + ["UpBlock2D"] * (n - 1)
    return {
        "sample_size": int(image_size),
        "in_channels": int(in_channels),
        "out_channels": int(in_channels),
        "layers_per_block": int(layers_per_block),
        "block_out_channels": tuple(channels),
        "down_block_types": tuple(down),
        "up_block_types": tuple(up),
        "norm_num_groups": _norm_groups(channels),
        "attention_head_dim": min(8, channels[-1]),
    }


def build_unet(config: dict, seed: int):
    """A ``UNet2DModel`` from ``config`` with initial weights drawn from a seeded generator."""
    from diffusers import UNet2DModel

    with torch.random.fork_rng(devices=[]):  # diffusers' layers draw from the global RNG: seed it, then restore
        torch.manual_seed(derive_seed(seed, "ddim_train_init"))
        return UNet2DModel(**config)


def ddpm_scheduler(schedule_cfg: dict):
    """A diffusers ``DDPMScheduler`` with the workflow's schedule (epsilon prediction, no clipping)."""
    from diffusers import DDPMScheduler

    kind = schedule_cfg["kind"]
    return DDPMScheduler(
        num_train_timesteps=int(schedule_cfg["T"]),
        beta_schedule=DIFFUSERS_BETA_SCHEDULE[kind],
        beta_start=float(schedule_cfg["beta_start"]),
        beta_end=float(schedule_cfg["beta_end"]),
        prediction_type="epsilon",
        clip_sample=False,
    )
