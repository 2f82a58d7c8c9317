"""Prompt-to-prompt stage (exercise 5): one function per rule.

* ``p2p_edit``    :func:`p2p_edit`: one configured edit, with and without attention control;
* ``p2p_metrics`` :func:`p2p_metrics`.

The attention control is :mod:`diffusion_report.core.attention`; the model
:mod:`diffusion_report.models.text2image`.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from diffusion_report.core.attention import edit_controller, region_mask, token_labels
from diffusion_report.core.prompts import validate_edits

log = logging.getLogger(__name__)


ARTIFACTS = ("source", "edit", "baseline", "side_by_side", "attention", "metrics")


METRIC_COLUMNS = ["edit", "mode", "mask", "mask_fraction", "edit_mae", "baseline_mae", "edit_mae_outside", "baseline_mae_outside"]


def pixel_mae(a, b, keep=None) -> float:
    """Mean absolute difference of two uint8 images (H, W, C), in [0, 1]; over ``keep`` (H, W) if given."""
    import numpy as np

    d = np.abs(a.astype(np.float64) - b.astype(np.float64)) / 255.0
    if keep is not None:
        keep = np.asarray(keep, dtype=bool)
        if not keep.any():
            return float("nan")
        d = d[keep]
    return float(d.mean())


def side_by_side_figure(path, images: Sequence, titles: Sequence[str]) -> None:
    """Images (H, W, C uint8) in a row with their prompts as titles."""
    import textwrap

    import matplotlib

    from diffusion_report import figures  # noqa: F401 - the project's matplotlib style, the same in every process

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusion_report.io import save_figure

    fig, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images), 3.9), dpi=100)
    for ax, img, title in zip(axes, images, titles):
        ax.imshow(img, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(title, 30)), fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)


def attention_figure(path, rows: Sequence[tuple[str, torch.Tensor, list[tuple[int, str]]]]) -> None:
    """Per-token cross-attention maps: one row per (title, maps (h, w, L), token labels)."""
    import matplotlib

    from diffusion_report import figures  # noqa: F401 - the project's matplotlib style, the same in every process

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusion_report.io import save_figure

    ncols = max(1, max(len(lbl) for _, _, lbl in rows))
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.15 * ncols + 0.4, 1.35 * len(rows) + 0.3), dpi=100, squeeze=False)
    for r, (title, maps, labels) in enumerate(rows):
        for c in range(ncols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(labels):
                pos, text = labels[c]
                m = maps[..., pos]
                ax.imshow((m / m.max().clamp_min(1e-12)).numpy(), cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(text, fontsize=8)
        axes[r, 0].text(-0.15, 0.5, title, transform=axes[r, 0].transAxes, rotation=90, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)


def run_edit(pipe, edit: dict, outputs: dict, *, num_steps: int, guidance_scale: float, mask_threshold: float = 0.3, seed: int = 0) -> dict:
    """Run one edit and write its artifacts; return its metrics row.

    The source and target prompts are sampled together under the edit's controller, and the
    target alone without control (the baseline), all from the same x_T (drawn from the edit's
    seed, else ``seed``). ``outputs`` maps each of :data:`ARTIFACTS` to a path.
    """
    import pandas as pd

    from diffusion_report.io import save_png, to_uint8, write_csv
    from diffusion_report.models.text2image import generate, initial_latents

    missing = [k for k in ARTIFACTS if k not in outputs]
    if missing:
        raise ValueError(f"run_edit: no output path for {', '.join(missing)}")
    errors = validate_edits([edit])
    if errors:
        raise ValueError("; ".join(errors))
    max_len = pipe.max_length
    x_T = initial_latents(pipe, int(edit.get("seed", seed)), "p2p")
    ctrl = edit_controller(edit, pipe.tokenizer, num_steps, max_len, mask_threshold)
    log.info("%s: %s %r -> %r", edit["name"], edit["mode"], edit["source"], edit["target"])
    images, store = generate(pipe, [edit["source"], edit["target"]], x_T, num_steps, guidance_scale, ctrl)
    base_images, base_store = generate(pipe, [edit["target"]], x_T, num_steps, guidance_scale)
    src, edt, base = to_uint8(images[0]), to_uint8(images[1]), to_uint8(base_images[0])
    save_png(outputs["source"], src)
    save_png(outputs["edit"], edt)
    save_png(outputs["baseline"], base)
    side_by_side_figure(outputs["side_by_side"], [src, edt, base], [
        f"source: {edit['source']}", f"{edit['mode']}: {edit['target']}", f"no control: {edit['target']}"])
    avg, base_avg = store.average(), base_store.average()
    attention_figure(outputs["attention"], [
        ("source", avg[0], token_labels(edit["source"], pipe.tokenizer)),
        ("edited", avg[1], token_labels(edit["target"], pipe.tokenizer)),
        ("no control", base_avg[0], token_labels(edit["target"], pipe.tokenizer)),
    ])
    mask, kind = region_mask(store, edit, pipe.tokenizer, max_len, mask_threshold, tuple(src.shape[:2]))
    outside = (~mask).numpy()
    row = {
        "edit": edit["name"], "mode": edit["mode"], "mask": kind, "mask_fraction": float(mask.float().mean()),
        "edit_mae": pixel_mae(src, edt), "baseline_mae": pixel_mae(src, base),
        "edit_mae_outside": pixel_mae(src, edt, outside), "baseline_mae_outside": pixel_mae(src, base, outside),
    }
    write_csv(outputs["metrics"], pd.DataFrame([row], columns=METRIC_COLUMNS))
    log.info("%s: %s", edit["name"], row)
    return row


def load_model(p2p_cfg: dict, device: str = "auto", model_dir: str | None = None):
    """The text-to-image model of the ``p2p`` config: the trained folder or ``p2p.model.pretrained``."""
    from diffusion_report.models.text2image import load_text2image

    if p2p_cfg["model"]["source"] == "train":
        if not model_dir:
            raise ValueError("p2p.model.source is 'train' but no trained model folder was given (rule t2i_train's output)")
        where, key = model_dir, "p2p.model.source"
    else:
        where, key = p2p_cfg["model"]["pretrained"], "p2p.model.pretrained"
    return load_text2image(where, config_key=key, device=device, fp16=bool(p2p_cfg.get("fp16", False)), scheduler=p2p_cfg.get("scheduler", "ddim"))


def p2p_edit(p2p_cfg: dict, edit: dict, outputs: dict, *, seed: int, device: str = "auto", model_dir: str | None = None) -> dict:
    """Rule p2p_edit: load the model of the config and run one edit."""
    pipe = load_model(p2p_cfg, device, model_dir)
    return run_edit(pipe, edit, outputs, num_steps=int(p2p_cfg["num_inference_steps"]),
                    guidance_scale=float(p2p_cfg["guidance_scale"]), mask_threshold=float(p2p_cfg.get("mask_threshold", 0.3)), seed=seed)


def p2p_metrics(paths: Sequence[str], out_csv: str) -> None:
    """Concatenate the per-edit metrics.csv files (in the given order) into one CSV."""
    import pandas as pd

    from diffusion_report.io import write_csv

    frames = [pd.read_csv(p) for p in paths]
    if not frames:
        raise ValueError("no per-edit metrics to aggregate")
    write_csv(out_csv, pd.concat(frames, ignore_index=True)[METRIC_COLUMNS])
