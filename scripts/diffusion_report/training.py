"""Train a small DDPM (Ho et al. 2020) on scikit-learn's digits: the embedded, offline model.

Algorithm 1 of the DDPM paper with the "simple" loss (eq. 14):

    L_simple = E_{t, x_0, eps} || eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2

with t uniform in 1..T (our convention, see :mod:`schedules`; the UNet is called with the
diffusers timestep t - 1), AdamW, a linear warm-up then cosine learning-rate decay, and an
exponential moving average (EMA) of the weights, which is what is saved and sampled from.

Every random draw (initial weights, batches, t, eps) comes from a generator seeded from the
config, so a run on the same machine and thread count gives the same weights.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .ddim_cells import WEIGHT_FILES
from .forward import q_sample
from .io import atomic_path, derive_seed, make_generator
from .schedules import Schedule

log = logging.getLogger(__name__)

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




def recipe(config: dict) -> dict:
    """What determines the trained weights: the ``ddim.train`` block, the schedule and the seed.

    Saved as ``ddim_config.json`` beside the weights and compared when shipped weights are used.
    """
    return json.loads(json.dumps({"train": config["ddim"]["train"], "schedule": config["schedule"], "seed": int(config["seed"])}))


def loss_figure(path: str | Path, df, n_params: int | None = None) -> None:
    """Per-step loss (light) and its running mean (``loss_smoothed``), log scale."""
    from . import figures  # noqa: F401 - the project's matplotlib style, the same in every process
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import save_figure

    fig, ax = plt.subplots(figsize=(5.0, 3.2), dpi=150)
    ax.plot(df["step"], df["loss"], lw=0.5, alpha=0.35, color="C0", label="batch loss")
    ax.plot(df["step"], df["loss_smoothed"], lw=1.5, color="C0", label="running mean")
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(r"$L_\mathrm{simple}$ (MSE of $\epsilon$)")
    if n_params:
        ax.set_title(f"DDPM training on digits ({n_params / 1e6:.2f}M parameters)")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    save_figure(path, fig)
    plt.close(fig)


def loss_table(losses: list[float]):
    """DataFrame step, loss, loss_smoothed (running mean over min(50, steps / 10) steps)."""
    import pandas as pd

    df = pd.DataFrame({"step": range(1, len(losses) + 1), "loss": losses})
    window = max(1, min(50, len(losses) // 10))
    df["loss_smoothed"] = df["loss"].rolling(window, min_periods=1).mean()
    return df


def run_training(
    model_dir: str | Path,
    loss_csv: str | Path,
    loss_png: str | Path,
    config: dict,
    *,
    checkpoint: str | Path | None = None,
) -> str:
    """The ``ddim_train`` rule: train on the digits ``ddpm`` split, or install the shipped weights.

    ``ddim.retrain: true`` trains here (resuming from ``checkpoint`` when one is given and
    exists) and saves the EMA UNet + scheduler + recipe; otherwise the folder
    ``ddim.weights`` is checked against its SHA256SUMS and its recipe against the config,
    then copied. ``model_dir`` receives ``config.json``, ``diffusion_pytorch_model.safetensors``,
    ``scheduler_config.json`` (the layout of google/ddpm-cifar10-32) and ``ddim_config.json``,
    written atomically. Returns a one-line description of where the weights came from.
    """
    import shutil

    import pandas as pd

    from . import digits
    from .io import verify_sha256sums, write_csv, write_text

    dcfg = config["ddim"]
    if not dcfg.get("retrain", True):
        src = Path(dcfg["weights"])
        verify_sha256sums(src, WEIGHT_FILES, "ddim.weights", "set ddim.retrain: true to train the model here")
        shipped = json.loads((src / "model" / "ddim_config.json").read_text())
        if shipped != recipe(config):
            diff = sorted(k for k in set(shipped) | set(recipe(config)) if shipped.get(k) != recipe(config).get(k))
            raise ValueError(
                f"ddim.weights: the shipped weights in {src} were trained with another recipe (differs in: "
                f"{', '.join(diff)}; shipped: {json.dumps({k: shipped.get(k) for k in diff})}); "
                "set ddim.retrain: true to train with this config, or restore those keys"
            )
        with atomic_path(model_dir) as tmp:
            shutil.copytree(src / "model", tmp)
        df = pd.read_csv(src / "loss.csv")
        write_csv(loss_csv, df)
        loss_figure(loss_png, df)
        return f"shipped weights {src} (sha256-verified)"

    tcfg = config["ddim"]["train"]
    seed = int(config["seed"])
    schedule = Schedule.from_config(config["schedule"])
    image_size = int(tcfg["image_size"])
    x, _ = digits.digits_split(image_size, seed)["ddpm"]
    cfg = unet_config(image_size, tcfg["channels"])
    log.info("training a DDPM on %d digits at %dx%d, UNet %s", x.shape[0], image_size, image_size, cfg["block_out_channels"])
    ema, losses = train_ddpm(
        x,
        schedule,
        cfg,
        steps=int(tcfg["steps"]),
        batch_size=int(tcfg["batch_size"]),
        learning_rate=float(tcfg["learning_rate"]),
        ema_decay=float(tcfg["ema_decay"]),
        seed=seed,
        progress=True,
        checkpoint=checkpoint,
    )
    n_params = sum(p.numel() for p in ema.parameters())
    log.info("trained %d parameters; final loss (mean of last 100) %.4f", n_params, sum(losses[-100:]) / len(losses[-100:]))
    with atomic_path(model_dir) as tmp:
        ema.save_pretrained(tmp, safe_serialization=True)
        ddpm_scheduler(config["schedule"]).save_pretrained(tmp)
        write_text(Path(tmp) / "ddim_config.json", json.dumps(recipe(config), indent=2, sort_keys=True) + "\n")
    df = loss_table(losses)
    write_csv(loss_csv, df)
    loss_figure(loss_png, df, n_params)
    if checkpoint is not None:
        Path(checkpoint).unlink(missing_ok=True)  # the model folder now holds the result
    return "trained here"
