"""DDIM stage (exercise 4): one function per rule.

* ``ddim_train``  :func:`ddim_train`: verify and copy the shipped digits DDPM, or train it here;
* ``ddim_x_T``    :func:`ddim_x_T`: the one fixed x_T every sampler starts from;
* ``ddim_sample`` / ``ddim_ddpm_baseline`` :func:`ddim_sample`: DDIM at S steps / DDPM;
* ``ddim_figures`` :func:`ddim_figures`: the grid, the convergence plot and the metrics table.

The samplers are :mod:`diffusion_report.core.samplers`; the models :mod:`diffusion_report.models`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from diffusion_report.core import samplers
from diffusion_report.core.schedules import Schedule
from diffusion_report.io import (
    atomic_path,
    load_tensor,
    make_generator,
    save_tensor,
    tensor_sha256,
    write_text,
)
from diffusion_report.models.ddpm import ddpm_scheduler, image_shape_and_T, load_model, unet_config
from diffusion_report.models.files import DDIM_WEIGHT_FILES as WEIGHT_FILES
from diffusion_report.models.training import train_ddpm
from diffusion_report.stages.ddim_cells import PIXEL_BOUND

log = logging.getLogger(__name__)


def make_x_T(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The one x_T ~ N(0, I) of the comparison, float32 on the CPU, from generator ("ddim_x_T")."""
    return torch.randn(shape, generator=make_generator(seed, "ddim_x_T"), dtype=torch.float32)


def ddim_x_T(out_path: str | Path, model: str, *, num_samples: int, step_counts, seed: int) -> None:
    """The ``ddim_x_T`` rule: draw x_T (num_samples, C, H, W) for the image shape of ``model`` (a
    folder or hub id), after checking that every step count fits its schedule. Reads the model's
    config files only: no weights are loaded and diffusers is not imported."""
    image, T = image_shape_and_T(model)
    samplers.check_step_counts(step_counts, T)
    shape = (int(num_samples), *image)
    x_T = make_x_T(shape, int(seed))
    log.info("x_T: shape %s, mean %.4f, std %.4f", shape, float(x_T.mean()), float(x_T.std()))
    save_tensor(out_path, x_T, {"seed": int(seed), "name": "ddim_x_T"})


NOISE_PATH = "ddim_noise"


def noise_path(seed: int, T: int, shape, rows: slice | None = None) -> samplers.BrownianNoise:
    """The stage's one Brownian noise path over x_T's full ``shape`` (``rows`` of it for a batch),
    from generator (``ddim_noise``). Every stochastic sampler of the stage takes its z from it (DDIM
    at eta > 0, the DDPM baseline, the cells of the DDIM paper's Table 1), so cells that differ by
    their sampler or their S share x_T *and* their randomness, and a sample's noise does not
    depend on the batch it was drawn in (:class:`~diffusion_report.core.samplers.BrownianNoise`)."""
    return samplers.BrownianNoise(make_generator(int(seed), NOISE_PATH), int(T), tuple(shape), rows=rows)


def _sample_batches(fn, x_T: torch.Tensor, device, batch_size: int | None) -> torch.Tensor:
    """``fn(x_batch, rows)`` over x_T split into batches (``rows``: the batch's slice of x_T)."""
    size = int(batch_size) if batch_size else x_T.shape[0]
    outs = []
    for i in range(0, x_T.shape[0], size):
        rows = slice(i, min(i + size, x_T.shape[0]))
        outs.append(fn(x_T[rows].to(device), rows).to("cpu", torch.float32))
    return torch.cat(outs)


def ddim_sample(
    x_T_path: str | Path,
    out_path: str | Path,
    timing_path: str | Path,
    model: str,
    dcfg: dict,
    *,
    seed: int,
    device: str = "auto",
    sampler: str,
    num_steps: int | None = None,
) -> None:
    """The ``ddim_sample`` / ``ddim_ddpm_baseline`` rules: sample ``model`` from the saved x_T.

    ``dcfg`` is the ``ddim`` config block (eta, skip_type, clip_sample, batch_size, precision). ``sampler``
    is ``ddim`` (with ``num_steps``) or ``ddpm`` (all T steps). Writes the samples (safetensors,
    deterministic) and, separately, the wall time (JSON; times vary run to run). The noise of
    DDIM at eta > 0 and of DDPM is the stage's one path (:func:`noise_path`).
    """
    from diffusion_report.models.loading import autocast, resolve_device, resolve_precision

    device = resolve_device(device)
    precision = resolve_precision(str(dcfg.get("precision", "float32")), device)
    unet, schedule, prediction_type = load_model(model, device)
    if sampler == "ddim":
        samplers.check_step_counts([num_steps], schedule.T)
    x_T, _ = load_tensor(x_T_path)
    clip = bool(dcfg.get("clip_sample", False))
    eta = float(dcfg.get("eta", 0.0))
    skip = str(dcfg.get("skip_type", "uniform"))
    seed = int(seed)
    if sampler == "ddim":
        S = int(num_steps)
        nfe = len(samplers.select_timesteps(S, schedule.T, skip))

        def fn(x, rows):
            return samplers.ddim_sample(unet, x, schedule, S, eta=eta, skip_type=skip, clip_sample=clip,
                               prediction_type=prediction_type, progress=True,
                               noise_sampler=noise_path(seed, schedule.T, x_T.shape, rows))

        meta = {"sampler": "ddim", "steps": S, "nfe": nfe, "eta": eta, "skip_type": skip, "clip_sample": clip}
    elif sampler == "ddpm":

        def fn(x, rows):
            return samplers.ddpm_sample(unet, x, schedule, noise_sampler=noise_path(seed, schedule.T, x_T.shape, rows),
                               clip_sample=clip, prediction_type=prediction_type, progress=True)

        meta = {"sampler": "ddpm", "steps": schedule.T, "nfe": schedule.T, "eta": 1.0, "skip_type": "all", "clip_sample": clip}
    else:
        raise ValueError(f"unknown sampler {sampler!r} (ddim or ddpm)")
    meta["precision"] = precision
    meta["x_T_sha256"] = tensor_sha256(x_T)
    log.info("%s: %s on %s, %d samples", sampler, meta, device, x_T.shape[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with autocast(device, precision):
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
    import matplotlib

    from diffusion_report import figures  # the project's matplotlib style and page size

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusion_report.io import to_uint8

    n = min(max_cols, rows[0][1].shape[0])
    h = rows[0][1].shape[-1]
    cell = figures.fit_cell(0.55, len(rows), n, 1.0, 0.5)
    fig, axes = plt.subplots(len(rows), 1, figsize=(cell * n + 1.0, (cell + 0.05) * len(rows) + 0.5), dpi=150, squeeze=False)
    for ax, (name, x) in zip(axes[:, 0], rows):
        tiles = [to_uint8(img) for img in x[:n]]
        pad = np.full((tiles[0].shape[0], 1) + tiles[0].shape[2:], 255, dtype=np.uint8)
        strip = np.concatenate([t for tile in tiles for t in (tile, pad)][:-1], axis=1)
        ax.imshow(strip, cmap="gray" if strip.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
        ax.set_xticks([(h + 1) * i + (h - 1) / 2 for i in range(n)])
        ax.set_xticklabels([str(i) for i in range(n)] if ax is axes[-1, 0] else [], fontsize=figures.MIN_FONT_PT)
        ax.tick_params(length=0)
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        for s in ax.spines.values():
            s.set_visible(False)
    axes[-1, 0].set_xlabel("sample (same $x_T$ in every row)", fontsize=8)
    fig.tight_layout(h_pad=0.2)
    return fig


def _convergence_figure(df, ref_label: str):
    import matplotlib

    from diffusion_report import figures  # the project's matplotlib style and page size

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dd = df[(df["sampler"] == "ddim") & (df["label"] != ref_label)]
    dp = df[df["sampler"] == "ddpm"]
    cols = [("mse", "MSE to reference", True), ("ssim", "SSIM to reference", False)]
    if "recognisability" in df.columns:
        cols.append(("recognisability", "recognisability (mean top-class p)", False))
    fig, axes = plt.subplots(1, len(cols), figsize=(min(3.3 * len(cols), figures.PAGE_WIDTH_IN), 2.7), dpi=150, squeeze=False)
    for ax, (col, title, logy) in zip(axes[0], cols):
        sub = dd if col != "recognisability" else df[df["sampler"] == "ddim"]
        etas = sorted({float(e) for e in sub["eta"]})
        ax.plot(sub["steps"], sub[col], "o-", color="C0", label="DDIM (\u03b7 = " + ", ".join(f"{e:g}" for e in etas) + ")")
        if len(dp):
            ax.axhline(float(dp[col].iloc[0]), color="C3", ls="--", lw=1, label=f"DDPM {int(dp['steps'].iloc[0])} steps")
        ax.set_xscale("log")
        if logy and ((sub[col] > 0).any() or (len(dp) and float(dp[col].iloc[0]) > 0)):  # one step count: nothing but the reference
            ax.set_yscale("log")
        ax.set_xlabel("sampling steps", fontsize=8)
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=figures.MIN_FONT_PT)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].legend(frameon=False, fontsize=figures.MIN_FONT_PT)
    sampler, _, steps = ref_label.partition("_")
    fig.suptitle(f"Convergence to the {sampler.upper()} {steps}-step sample from the same $x_T$", fontsize=9)
    fig.tight_layout()
    return fig


def ddim_figures(
    samples: dict[str, str],
    timings: dict[str, str],
    *,
    grid_png: str,
    convergence_png: str,
    metrics_csv: str,
    timing_csv: str,
    png_dir: str,
    seed: int,
    classifier_csv: str | None = None,
) -> None:
    """The ``ddim_figures`` rule: grid, per-sample PNGs, distance/recognisability metrics, timing.

    ``samples`` / ``timings`` map labels (``ddim_50``, ``ddpm_1000``) to the files written by
    :func:`ddim_sample`. The reference for the distances is the DDIM run with the most steps.
    """
    import pandas as pd

    from diffusion_report import metrics as M
    from diffusion_report.io import save_figure, save_png, write_csv

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
        from diffusion_report.models import digits

        clf = digits.train_classifier(int(ref_x.shape[-1]), int(seed))
        log.info("recognisability classifier: accuracy %.4f on %d held-out digits", clf.test_accuracy, clf.n_test)
        write_csv(classifier_csv, pd.DataFrame([{
            "classifier": f"MLP {tuple(digits.HIDDEN)} on 8x8 average-pooled images",
            "n_train": clf.n_train, "n_test": clf.n_test, "test_accuracy": clf.test_accuracy,
        }]))
        real = digits.digits_split(int(ref_x.shape[-1]), int(seed))["test"][0]  # every run has x_T's shape
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
            "outside_bound": M.samples_outside(x, PIXEL_BOUND),
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
                    "wall_s": t["wall_s"], "s_per_image": t["s_per_image"], "device": t["device"], "threads": t["threads"],
                    "precision": t.get("precision", "float32")})
    tdf = pd.DataFrame(tim).set_index("label").loc[[r[0] for r in ordered]].reset_index()
    write_csv(timing_csv, tdf)

    fig = _grid_figure([(label.replace("_", " "), x) for label, x, _ in ordered])
    save_figure(grid_png, fig)
    fig = _convergence_figure(df, ref_label)
    save_figure(convergence_png, fig)
    import matplotlib.pyplot as plt

    plt.close("all")


def recipe(config: dict) -> dict:
    """What determines the trained weights: the ``ddim.train`` block, the schedule and the seed.

    Saved as ``ddim_config.json`` beside the weights and compared when shipped weights are used.
    """
    return json.loads(json.dumps({"train": config["ddim"]["train"], "schedule": config["schedule"], "seed": int(config["seed"])}))


def loss_figure(path: str | Path, df, n_params: int | None = None) -> None:
    """Per-step loss (light) and its running mean (``loss_smoothed``), log scale."""
    import matplotlib

    from diffusion_report import figures  # noqa: F401 - the project's matplotlib style, the same in every process

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusion_report.io import save_figure

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


def ddim_train(
    model_dir: str | Path,
    loss_csv: str | Path,
    loss_png: str | Path,
    config: dict,
    *,
    checkpoint: str | Path | None = None,
    weights_dir: str | Path | None = None,
) -> str:
    """The ``ddim_train`` rule: train on the digits ``ddpm`` split, or install the shipped weights
    from ``weights_dir`` (default: ``ddim.weights``).

    ``ddim.retrain: true`` trains here (resuming from ``checkpoint`` when one is given and
    exists) and saves the EMA UNet + scheduler + recipe; otherwise the folder
    ``ddim.weights`` is checked against its SHA256SUMS and its recipe against the config,
    then copied. ``model_dir`` receives ``config.json``, ``diffusion_pytorch_model.safetensors``,
    ``scheduler_config.json`` (the layout of google/ddpm-cifar10-32) and ``ddim_config.json``,
    written atomically. Returns a one-line description of where the weights came from.
    """
    import shutil

    import pandas as pd

    from diffusion_report.io import verify_sha256sums, write_csv, write_text
    from diffusion_report.models import digits

    dcfg = config["ddim"]
    if not dcfg.get("retrain", True):
        src = Path(weights_dir or dcfg["weights"])
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
        return f"shipped weights {dcfg['weights']} (sha256-verified)"

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
