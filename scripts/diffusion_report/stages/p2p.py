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

    fig, axes = plt.subplots(1, len(images), figsize=(2.2 * len(images), 2.9), dpi=100)  # prints at its own size
    for ax, img, title in zip(axes, images, titles):
        ax.imshow(img, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(title, 24)), fontsize=8.5)
        ax.axis("off")
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)


ATTENTION_CMAP = "inferno"
ATTENTION_ALPHA = 0.7  # opacity of the attention colours over the grey-scale image (and of the colour bar over white)
ATTENTION_IMAGE_CONTRAST = 0.5  # the grey-scale image under the colours, lightened to [255 * (1 - this), 255]
ATTENTION_DPI = 150
ATTENTION_FONT_PT = 8.0  # at the figure's size; the report prints it at >= 8 pt (see attention_figure)
PRINT_WIDTH_IN = 482 / 72  # the widest the report prints a figure (17 cm)
PRINT_HEIGHT_IN = 19 / 2.54  # the highest (19 cm)


def upsample_nearest(m, size: tuple[int, int]):
    """A (h, w) map at ``size`` (H, W), nearest neighbour (as ``F.interpolate(mode="nearest")``), float64."""
    import numpy as np

    m = np.asarray(m, dtype=np.float64)
    H, W = int(size[0]), int(size[1])
    rows = np.minimum((np.arange(H) * m.shape[0]) // H, m.shape[0] - 1)
    cols = np.minimum((np.arange(W) * m.shape[1]) // W, m.shape[1] - 1)
    return m[rows][:, cols]


def _text_width_in(text: str, size: float) -> float:
    """Width in inches of ``text`` set at ``size`` points in the default font."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    return TextToPath().get_text_width_height_descent(text, FontProperties(size=size), ismath=False)[0] / 72


def attention_figure(path, rows: Sequence[tuple[str, torch.Tensor, list[tuple[int, str]], object]]):
    """Per-token cross-attention maps over the generated images, one colour scale for the figure.

    One row per (title, maps (h, w, L), token labels [(position, text)], image (H, W, C) uint8):
    each labelled token's map is upsampled (nearest neighbour) to the image's size and drawn in
    ``ATTENTION_CMAP`` at ``ATTENTION_ALPHA`` over a grey-scale copy of that row's image. All panels
    share vmin = 0 and vmax = the largest value shown, and one colour bar. The maps are what
    :meth:`AttentionStore.average` gives: cross-attention probabilities of the conditional branch,
    averaged over heads, over the cross-attention layers at the stored resolution and over the steps.

    Sized so that the report prints every text at >= 7 pt: at most ``PRINT_WIDTH_IN`` wide (a prompt
    with more tokens than fit continues on further lines), fonts ``ATTENTION_FONT_PT``, panels no
    narrower than their token labels. Returns the (closed) figure;
    its colour bar is the axes labelled ``"<colorbar>"``.
    """
    import textwrap

    import matplotlib
    import numpy as np

    from diffusion_report import figures  # noqa: F401 - the project's matplotlib style, the same in every process

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    from diffusion_report.io import save_figure

    if not rows:
        raise ValueError("attention_figure: no rows")
    panels = []  # per row: [(text, map at the image size)], grey image
    for title, maps, labels, image in rows:
        img = np.asarray(image)
        if img.ndim == 3:
            grey = img[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        else:
            grey = img.astype(np.float64)
        maps = maps.detach().float().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps, dtype=np.float64)
        grey = 255.0 - ATTENTION_IMAGE_CONTRAST * (255.0 - grey)  # lightened: the attention colours dominate
        panels.append(([(text, upsample_nearest(maps[..., pos], grey.shape)) for pos, text in labels], grey))
    values = [m for cells, _ in panels for _, m in cells]
    vmin = min([0.0] + [float(m.min()) for m in values])  # 0 (a negative reweight scale would go below)
    vmax = max([0.0] + [float(m.max()) for m in values])
    norm = Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1.0)
    h, w = rows[0][1].shape[:2]

    # Layout: square panels of side `cell`, the figure at most PRINT_WIDTH_IN wide and PRINT_HEIGHT_IN
    # high (so printed at full size), panels wide enough that neighbouring token labels do not touch;
    # a prompt with more tokens than fit on one line continues on further lines.
    fs = ATTENTION_FONT_PT
    ntok = max(1, max(len(cells) for cells, _ in panels))
    avail = PRINT_WIDTH_IN - 0.3 - 0.45  # less the row titles, the save's padding and the spacing
    widths = [[_text_width_in(t, fs) for t, _ in cells] for cells, _ in panels]
    widest = max([(a + b) / 2 for ws in widths for a, b in zip(ws, ws[1:])] + [w / 2 for ws in widths for w in ws])
    min_cell = min(avail, max(0.45, widest + 0.06))  # neighbouring token labels do not touch
    lines = -(-ntok // max(1, int(avail // min_cell)))  # ceil
    ncols = -(-ntok // lines)
    row_lines = [max(1, -(-len(cells) // ncols)) for cells, _ in panels]
    bar_in = 0.75 + 0.03 * fs
    cell = max(0.45, min(0.95, avail / ncols, (PRINT_HEIGHT_IN - 0.3 - bar_in) / sum(row_lines) - 0.12))
    width = 0.3 + cell * ncols
    fig = plt.figure(figsize=(width, sum(row_lines) * (cell + 0.12) + bar_in), dpi=ATTENTION_DPI, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.02, hspace=0.02)
    axes = fig.subplots(sum(row_lines), ncols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    first = 0  # the grid row of the prompt row's first line
    for (title, *_), (cells, grey), n_lines in zip(rows, panels, row_lines):
        if _text_width_in(title, fs) > cell - 0.04:  # "no control": one word a line along a small panel
            title = title.replace(" ", "\n")
        axes[first, 0].set_ylabel(title, fontsize=fs, labelpad=3)
        for k in range(n_lines * ncols):
            ax = axes[first + k // ncols, k % ncols]
            if k < len(cells):
                text, m = cells[k]
                ax.imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                ax.imshow(m, cmap=ATTENTION_CMAP, norm=norm, alpha=ATTENTION_ALPHA, interpolation="nearest")
                ax.set_title(text, fontsize=fs, pad=2)
            elif k > 0:
                ax.set_axis_off()
        first += n_lines
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=ATTENTION_CMAP), ax=axes, alpha=ATTENTION_ALPHA, orientation="horizontal",
                       location="bottom", fraction=0.05, shrink=0.9, pad=0.02,
                       aspect=max(4.0, 0.9 * cell * ncols / 0.12))  # a bar 0.12 in thick
    label = ["cross-attention probability of the token, one scale for all panels",
             f"(mean over denoising steps, heads and the {h}\u00d7{w} cross-attention layers)"]
    chars = max(30, int(width * 72 / (0.5 * fs)))  # narrow figures: wrap rather than widen the figure
    bar.set_label("\n".join(line for text in label for line in textwrap.wrap(text, chars, break_on_hyphens=False)), fontsize=fs)
    bar.ax.tick_params(labelsize=fs)
    save_figure(path, fig)
    plt.close(fig)
    return fig


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
        ("source", avg[0], token_labels(edit["source"], pipe.tokenizer), src),
        ("edited", avg[1], token_labels(edit["target"], pipe.tokenizer), edt),
        ("no control", base_avg[0], token_labels(edit["target"], pipe.tokenizer), base),
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
