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

    Sized so that the report prints every text at >= 7 pt: at most ``figures.PRINT_WIDTH_IN`` wide (a prompt
    with more tokens than fit continues on further lines), fonts ``ATTENTION_FONT_PT``, panels no
    narrower than their token labels. Returns the (closed) figure;
    its colour bar is the axes labelled ``"<colorbar>"``.
    """
    import textwrap

    import matplotlib
    import numpy as np

    from diffusion_report import figures  # the project's matplotlib style and print size

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

    # Layout: square panels of side `cell`, the figure at most figures.PRINT_WIDTH_IN wide and PRINT_HEIGHT_IN
    # high (so printed at full size), panels wide enough that neighbouring token labels do not touch;
    # a prompt with more tokens than fit on one line continues on further lines.
    fs = ATTENTION_FONT_PT
    ntok = max(1, max(len(cells) for cells, _ in panels))
    avail = figures.PRINT_WIDTH_IN - 0.3 - 0.45  # less the row titles, the save's padding and the spacing
    widths = [[_text_width_in(t, fs) for t, _ in cells] for cells, _ in panels]
    widest = max([(a + b) / 2 for ws in widths for a, b in zip(ws, ws[1:])] + [w / 2 for ws in widths for w in ws])
    min_cell = min(avail, max(0.45, widest + 0.06))  # neighbouring token labels do not touch
    lines = -(-ntok // max(1, int(avail // min_cell)))  # ceil
    ncols = -(-ntok // lines)
    row_lines = [max(1, -(-len(cells) // ncols)) for cells, _ in panels]
    bar_in = 0.75 + 0.03 * fs
    cell = max(0.45, min(0.95, avail / ncols, (figures.PRINT_HEIGHT_IN - 0.3 - bar_in) / sum(row_lines) - 0.12))
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


def run_edit(pipe, edit: dict, outputs: dict, *, num_steps: int, guidance_scale: float, mask_threshold: float = 0.3, seed: int = 0,
             self_max_tokens: int | None = None) -> dict:
    """Run one edit and write its artifacts; return its metrics row.

    ``self_max_tokens``: self-attention is injected at maps of at most this many pixels (None: the
    attention module's default, the smallest maps).

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
    ctrl = edit_controller(edit, pipe.tokenizer, num_steps, max_len, mask_threshold, self_max_tokens=self_max_tokens)
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
                    guidance_scale=float(p2p_cfg["guidance_scale"]), mask_threshold=float(p2p_cfg.get("mask_threshold", 0.3)), seed=seed,
                    self_max_tokens=p2p_cfg.get("self_max_tokens"))


def p2p_metrics(paths: Sequence[str], out_csv: str) -> None:
    """Concatenate the per-edit metrics.csv files (in the given order) into one CSV."""
    import pandas as pd

    from diffusion_report.io import write_csv

    frames = [pd.read_csv(p) for p in paths]
    if not frames:
        raise ValueError("no per-edit metrics to aggregate")
    write_csv(out_csv, pd.concat(frames, ignore_index=True)[METRIC_COLUMNS])


# --------------------------------------------------------------------------- editing given images
# Rule p2p_real_edit (Mokady et al. 2023): DDIM inversion, null-text inversion, then prompt-to-prompt.
REAL_ARTIFACTS = ("inversion", "input", "reconstruction_ddim", "reconstruction_null_text", "edits", "figure", "metrics", "timing")
REAL_METHODS = ("ddim_inversion", "null_text_inversion")
REAL_COLUMNS = ["image", "kind", "method", "prompt", "mode", "guidance_scale", "num_steps", "psnr", "ssim", "truth",
                "edit_type", "measured", "source_ok", "reached", "untouched_kept", "centroid_shift_px", "mask_iou", "success", "cause"]
# Wall times (measured: they differ from run to run, so they live in their own timing.csv and
# metrics.csv stays the same bytes on every run). ``step``: ddim_inversion (the DDIM inversion),
# null_text_inversion (DDIM plus null-text inversion: the time per image before any edit), edit
# (sampling one edit, ``method`` names it); ``threads``: torch's intra-op threads.
TIMING_COLUMNS = ["image", "step", "method", "seconds", "threads", "device"]


def real_input(entry: dict, data_cfg: dict | None, base_dir: str = ".", image_file: str | None = None, image_size: int | None = None):
    """The image of a ``p2p.real_edits`` entry, (3, H, W) in [-1, 1] at ``image_size`` (default
    ``t2i.data.image_size``), its ground truth and where that came from.

    The truth is {shape, colour, background, size_word} for one object, {objects: [(colour, shape)
    left, right], background} for two (:func:`shapes.parse_pair_caption`'s form). A drawn image
    (``image: {draw: ...}``) is rendered by :func:`shapes.render` (:func:`shapes.render_pair` with
    ``objects``); its truth is the drawing (size word by the generator's thresholds). A file is
    read as ``forward.images`` are (:func:`diffusion_report.images.load_image`: centre-cropped,
    resized); its truth is what its prompt says (:func:`shapes.parse_caption`, then
    :func:`shapes.parse_pair_caption`), or None when the prompt is not a caption or there is no
    ``data_cfg`` (a pretrained model: the captioned shapes are the embedded model's).
    """
    from diffusion_report.images import load_image
    from diffusion_report.models import shapes

    spec = shapes.ShapeSpec.from_config(data_cfg) if data_cfg else None
    image = entry["image"]
    if isinstance(image, str):
        img = load_image(image_file or image, int(image_size or spec.image_size), base_dir, key=f"p2p.real_edits ({entry['name']}).image")
        truth = (shapes.parse_caption(spec, entry["prompt"]) or shapes.parse_pair_caption(spec, entry["prompt"])) if spec else None
        return img, truth, "prompt"
    if spec is None:
        raise ValueError(f"p2p.real_edits ({entry['name']}).image: a drawn image needs the embedded model (p2p.model.source: train)")
    d = image["draw"]
    if "objects" in d:
        objs = d["objects"]
        objects = [(o["colour"], o["shape"]) for o in objs]
        img, _ = shapes.render_pair(spec, [objects], [d["background"]], *([[float(o[k]) for o in objs]] for k in ("cx", "cy", "radius")))
        return img[0], {"objects": objects, "background": d["background"]}, "drawn"
    img, _ = shapes.render(spec, [d["shape"]], [d["colour"]], [d["background"]], [float(d["cx"])], [float(d["cy"])], [float(d["radius"])])
    return img[0], {"shape": d["shape"], "colour": d["colour"], "background": d["background"],
                    "size_word": spec.size_word(float(d["radius"]))}, "drawn"


def real_edit_figure(path, images: Sequence, titles: Sequence[str], cell: float = 1.25) -> None:
    """One row of images (H, W, C uint8) with titles: input | DDIM-inversion reconstruction |
    null-text reconstruction | edits. Cells shrink (``figures.fit_cell``) so the row prints at its own
    size; titles at ``figures.MIN_FONT_PT``, wrapped to the cell's width."""
    import textwrap

    import matplotlib

    from diffusion_report import figures

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusion_report.io import save_figure

    n = len(images)
    cell = figures.fit_cell(cell, 1, n, 0.15 * n, 0.9)  # the width decides; titles are wrapped to it
    chars = max(10, int(cell * 72 / (0.55 * figures.MIN_FONT_PT)))
    wrapped = ["\n".join(w for part in str(t).split("\n") for w in (textwrap.wrap(part, chars) or [""])) for t in titles]
    lines = max(t.count("\n") + 1 for t in wrapped)
    title_h = lines * figures.MIN_FONT_PT * 1.25 / 72
    cell = figures.fit_cell(cell, 1, n, 0.15 * n, title_h + 0.2)
    fig, axes = plt.subplots(1, n, figsize=(n * (cell + 0.15), cell + title_h + 0.2), dpi=100, squeeze=False)
    for ax, img, title in zip(axes[0], images, wrapped):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=figures.MIN_FONT_PT)
        ax.axis("off")
    fig.tight_layout(pad=0.3)
    save_figure(path, fig)
    plt.close(fig)


def _image_scores(a, b) -> tuple[float, float]:
    """(PSNR in dB, SSIM) of two images (3, H, W) in [-1, 1], mapped to [0, 1] (skimage.metrics, data range 1)."""
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio

    from diffusion_report.metrics import ssim, to_unit

    with np.errstate(divide="ignore"):  # identical images: PSNR +inf
        psnr = float(peak_signal_noise_ratio(to_unit(a), to_unit(b), data_range=1.0))
    return psnr, ssim(a, b)


def invert_batch(pipe, images, prompts: Sequence[str], steps: int, guidance: float, null_text: dict) -> dict:
    """DDIM then null-text inversion of B images at once, each under its own prompt (one null
    embedding per image: :func:`core.inversion.null_text_invert` with ``per_image``), and both
    reconstructions; in latent space through the model's VAE (:func:`models.text2image.encode`).
    images (B, 3, H, W) in [-1, 1]. Returns {timesteps, alphas_cumprod, kw (the final abar), x_T
    (B, C, h, w), nulls (S, B, L, D), losses (S, B: the last of each step), cond (B, L, D), rec_ddim, rec_null (B, 3, H, W, decoded,
    clamped, CPU float), seconds_ddim (encoding included), seconds_null (DDIM plus null-text)}."""
    import time

    from diffusers import DDIMScheduler

    from diffusion_report.core import inversion
    from diffusion_report.models.text2image import decode, encode, encode_prompts

    sched = DDIMScheduler.from_config(pipe.scheduler.config)  # inversion is DDIM's, whatever p2p.scheduler says
    sched.set_timesteps(int(steps))
    ts, ab = sched.timesteps.tolist(), sched.alphas_cumprod
    kw = {"final_alpha_cumprod": float(sched.final_alpha_cumprod)}
    cond, uncond = encode_prompts(pipe, list(prompts)), encode_prompts(pipe, [""])
    start = time.perf_counter()
    x0 = encode(pipe, images)
    pivot = inversion.ddim_invert(pipe.unet, x0, cond, ts, ab, **kw)
    t_ddim = time.perf_counter() - start
    rec_ddim = inversion.sample_with_nulls(pipe.unet, pivot[-1], cond, uncond[0], ts, ab, guidance, **kw)
    start = time.perf_counter()
    nulls, losses = inversion.null_text_invert(pipe.unet, pivot, cond, uncond, ts, ab, guidance, int(null_text["inner_steps"]),
                                               float(null_text["learning_rate"]), float(null_text["early_stop"]), per_image=True,
                                               return_losses=True, **kw)
    t_null = t_ddim + time.perf_counter() - start
    rec_null = inversion.sample_with_nulls(pipe.unet, pivot[-1], cond, nulls, ts, ab, guidance, **kw)
    return {"timesteps": ts, "alphas_cumprod": ab, "kw": kw, "x_T": pivot[-1], "nulls": nulls, "losses": losses, "cond": cond,
            "rec_ddim": decode(pipe, rec_ddim), "rec_null": decode(pipe, rec_null),
            "seconds_ddim": t_ddim, "seconds_null": t_null}


def real_edit(pipe, reader, entry: dict, truth: dict | None, truth_from: str, image, outputs: dict, *,
              mask_threshold: float = 0.3, self_max_tokens: int | None = None):
    """Invert one given image and edit it; write :data:`REAL_ARTIFACTS` and return the metrics rows.
    ``entry``: one ``p2p.real_edits`` entry as validated (the schema fills in its defaults: guidance,
    steps and ``null_text``, read here without fallbacks of their own).

    1. DDIM inversion under the prompt at guidance 1: the pivot x_0 .. x_T (:func:`core.inversion.ddim_invert`);
    2. its reconstruction: guided DDIM from x_T with the empty prompt's embedding at every step;
    3. null-text inversion at the entry's guidance (:func:`core.inversion.null_text_invert`) and its reconstruction;
    4. each edit: source and target sampled together from x_T with the per-step null embeddings under
       the edit's prompt-to-prompt controller (:func:`core.inversion.sample_with_nulls`).

    PSNR and SSIM compare each reconstruction (float, clamped to [-1, 1]) with the input. Wall times
    go to ``timing`` (:data:`TIMING_COLUMNS`): DDIM inversion alone, DDIM plus null-text inversion
    (the time per image before any edit), and the sampling of each edit. Each edit of a measurable
    type is judged by the attribute reader (:func:`stages.t2i.judge`) against ``truth`` (the input's
    attributes), its result against the input.
    Returns (metrics :data:`REAL_COLUMNS`, timing :data:`TIMING_COLUMNS`) as pandas DataFrames.
    """
    import time
    from pathlib import Path

    import pandas as pd

    from diffusion_report.core import inversion
    from diffusion_report.io import atomic_path, save_png, save_tensors, to_uint8, write_csv
    from diffusion_report.models import shapes
    from diffusion_report.models.text2image import decode, encode_prompts
    from diffusion_report.stages.t2i import PAIR_EDIT_TYPES, edit_type, judge, judge_pair

    missing = [k for k in REAL_ARTIFACTS if k not in outputs]
    if missing:
        raise ValueError(f"real_edit: no output path for {', '.join(missing)}")
    prompt, g, steps, nt = entry["prompt"], float(entry["guidance_scale"]), int(entry["num_inversion_steps"]), entry["null_text"]
    edits = [dict(e, source=prompt) for e in entry["edits"]]
    errors = validate_edits(edits, prefix=f"p2p.real_edits ({entry['name']}).edits")
    if errors:
        raise ValueError("; ".join(errors))
    inv = invert_batch(pipe, image[None], [prompt], steps, g, nt)  # 1.-3.
    ts, ab, kw = inv["timesteps"], inv["alphas_cumprod"], inv["kw"]
    x_T, nulls, losses = inv["x_T"], inv["nulls"][:, 0], inv["losses"][:, 0]  # one image: (S, L, D) nulls, shared by each edit's prompts
    rec_ddim, rec_null, t_ddim, t_null = inv["rec_ddim"], inv["rec_null"], inv["seconds_ddim"], inv["seconds_null"]
    log.info("%s: inverted in %.1f s (DDIM %.1f s); null-text losses per step %s", entry["name"], t_null, t_ddim,
             ", ".join(f"{v:.1e}" for v in losses.tolist()))

    rows, times, shown, titles = [], [], [to_uint8(image)], ["input"]
    where = {"threads": torch.get_num_threads(), "device": str(pipe.device)}
    meta = {"prompt": prompt, "guidance_scale": g, "num_steps": steps, "timesteps": ts}
    for method, rec, secs in (("ddim_inversion", rec_ddim, t_ddim), ("null_text_inversion", rec_null, t_null)):
        psnr, ssim = _image_scores(image, rec[0])
        rows.append({"image": entry["name"], "kind": "reconstruction", "method": method, "prompt": prompt, "mode": "",
                     "guidance_scale": g, "num_steps": steps, "psnr": psnr, "ssim": ssim, "truth": truth_from})
        times.append({"image": entry["name"], "step": method, "method": method, "seconds": secs, **where})
        shown.append(to_uint8(rec[0]))
        titles.append(f"{'DDIM inversion' if method == 'ddim_inversion' else 'null-text inversion'}\nPSNR {psnr:.1f} dB\nSSIM {ssim:.3f}")

    spec = reader.spec if reader is not None else None
    edited = {}
    for e in edits:  # 4.
        start = time.perf_counter()
        ctrl = edit_controller(e, pipe.tokenizer, steps, pipe.max_length, mask_threshold, self_max_tokens=self_max_tokens)
        out = inversion.sample_with_nulls(pipe.unet, x_T, encode_prompts(pipe, [prompt, e["target"]]), nulls, ts, ab, g, ctrl, **kw)
        img = decode(pipe, out[1:2])[0]
        secs = time.perf_counter() - start
        edited[e["name"]] = img
        row = {"image": entry["name"], "kind": "edit", "method": e["name"], "prompt": e["target"], "mode": e["mode"],
               "guidance_scale": g, "num_steps": steps, "truth": truth_from}
        times.append({"image": entry["name"], "step": "edit", "method": e["name"], "seconds": secs, **where})
        etype, why = edit_type(spec, e) if spec is not None else (None, "the attribute reader reads the embedded model's shapes only")
        pair = etype in PAIR_EDIT_TYPES
        if etype is None or truth is None:
            row.update({"measured": False, "cause": why if etype is None else "the prompt is not a caption, so the input's attributes are unknown"})
        elif pair != ("objects" in truth):
            row.update({"measured": False, "cause": f"the input shows {'two objects' if 'objects' in truth else 'one object'}, "
                                                    f"the edit's prompts {'two' if pair else 'one'}"})
        else:
            parse, verdict = (shapes.parse_pair_caption, judge_pair) if pair else (shapes.parse_caption, judge)
            row.update({"edit_type": etype, **verdict(reader, etype, truth, parse(spec, e["target"]), image, img)})
        rows.append(row)
        shown.append(to_uint8(img))
        verdict = "" if not row.get("measured") else ("\nreader: success" if row["success"] else "\nreader: failure")
        titles.append(f"{e['name']}:\n{e['target']}{verdict}")
        log.info("%s/%s: %s", entry["name"], e["name"], {k: row.get(k) for k in ("edit_type", "success", "cause")})

    save_tensors(outputs["inversion"], {"x_T": x_T[0], "null_embeddings": nulls, "losses": losses}, meta)
    save_png(outputs["input"], to_uint8(image))
    save_png(outputs["reconstruction_ddim"], shown[1])
    save_png(outputs["reconstruction_null_text"], shown[2])
    with atomic_path(outputs["edits"]) as tmp:
        tmp.mkdir()
        for name, img in edited.items():
            save_png(Path(tmp) / f"{name}.png", to_uint8(img))
    real_edit_figure(outputs["figure"], shown, titles)
    df = pd.DataFrame(rows).reindex(columns=REAL_COLUMNS)
    timing = pd.DataFrame(times, columns=TIMING_COLUMNS)
    write_csv(outputs["metrics"], df)
    write_csv(outputs["timing"], timing)
    log.info("%s:\n%s\n%s", entry["name"], df.drop(columns=["cause"]).to_string(), timing.to_string())
    return df, timing


def p2p_real_edit(entry: dict, p2p_cfg: dict, t2i_cfg: dict, outputs: dict, *, seed: int, device: str = "auto",
                  model_dir: str | None = None, image_file: str | None = None, reader_path: str | None = None):
    """Rule p2p_real_edit: one ``p2p.real_edits`` entry on the embedded model (``model_dir``:
    rule t2i_train's folder) or on ``p2p.model.pretrained`` (latent space: inverted through its VAE;
    no attribute reader). ``image_file``: the file the entry's image resolves to (the rule's input)."""
    from diffusion_report.stages.t2i import fit_reader

    pipe = load_model(p2p_cfg, device, model_dir)
    embedded = p2p_cfg["model"]["source"] == "train"  # the attribute reader and the drawn shapes are the embedded model's
    image, truth, truth_from = real_input(entry, t2i_cfg["data"] if embedded else None, image_file=image_file, image_size=pipe.image_size)
    reader = fit_reader(t2i_cfg, seed, reader_path) if embedded else None
    return real_edit(pipe, reader, entry, truth, truth_from, image, outputs, mask_threshold=float(p2p_cfg.get("mask_threshold", 0.3)),
                     self_max_tokens=p2p_cfg.get("self_max_tokens"))


# --------------------------------------------------------------------------- drawn images, inverted then edited
REAL_EVAL_ARTIFACTS = ("per_image", "summary", "timing", "examples")
REAL_EVAL_COLUMNS = ["edit", "seed_index", "method", "source", "target", "psnr_ddim", "psnr_null_text", "ssim_ddim", "ssim_null_text",
                     "source_ok", "success", "untouched_kept", "all_kept", "mask_iou", "centroid_shift_px", "radius_change_px", "pixel_mae",
                     "other_kept"]
REAL_EVAL_SUMMARY_COLUMNS = ["edit", "method", "n", "source_ok", "success", "all_kept", "mask_iou", "centroid_shift_px",
                             "other_kept", "other_kept_source_ok", "psnr_ddim", "psnr_null_text", "gain_db", "generated_n", "generated_success", "generated_all_kept"]
REAL_EVAL_TIMING_COLUMNS = ["edit", "n", "ddim_inversion_s", "null_text_inversion_s", "edit_s", "per_image_s", "threads", "device"]


def real_eval_edit_type(pipe, reader, edit: str, n: int, seed: int, eval_cfg: dict, null_text: dict) -> tuple[list[dict], dict, dict]:
    """One edit type over ``n`` drawn images (:func:`stages.t2i.drawn_cases`): invert them all
    (:func:`invert_batch`, at ``t2i.eval``'s steps and guidance), then sample each (source, target)
    pair from its image's x_T with its null embeddings, once under ``t2i.eval``'s prompt-to-prompt
    controller and once without control (the target prompt alone), all images in one batch per
    method. Each result is scored against the drawn input by :func:`stages.t2i.score_pair`, as
    ``t2i_eval`` scores generated pairs. Returns (rows :data:`REAL_EVAL_COLUMNS`, timing row, the
    images of the first case {input, ddim, null_text, p2p, baseline})."""
    import time

    from diffusion_report.core import inversion
    from diffusion_report.models.text2image import decode, encode_prompts
    from diffusion_report.stages.t2i import case_controllers, drawn_cases, score_pair

    steps, guidance = int(eval_cfg["num_steps"]), float(eval_cfg["guidance_scale"])
    cases, images = drawn_cases(reader.spec, edit, n, seed)
    inv = invert_batch(pipe, images, [c.source for c in cases], steps, guidance, null_text)
    args = (inv["timesteps"], inv["alphas_cumprod"], guidance)
    start = time.perf_counter()
    ctrl = case_controllers(pipe, cases, steps, float(eval_cfg["cross_replace_steps"]), float(eval_cfg["self_replace_steps"]),
                            eval_cfg.get("self_max_tokens"), eval_cfg.get("edited_word_cross_replace_steps"), eval_cfg.get("two_object"))
    pairs = encode_prompts(pipe, [p for c in cases for p in (c.source, c.target)])
    edited = decode(pipe, inversion.sample_with_nulls(pipe.unet, inv["x_T"].repeat_interleave(2, dim=0), pairs,
                                                      inv["nulls"].repeat_interleave(2, dim=1), *args, ctrl, **inv["kw"]))
    plain = decode(pipe, inversion.sample_with_nulls(pipe.unet, inv["x_T"], encode_prompts(pipe, [c.target for c in cases]), inv["nulls"],
                                                     *args, **inv["kw"]))
    t_edit = time.perf_counter() - start
    rows = []
    for i, case in enumerate(cases):
        psnr_d, ssim_d = _image_scores(images[i], inv["rec_ddim"][i])
        psnr_n, ssim_n = _image_scores(images[i], inv["rec_null"][i])
        common = {"edit": edit, "seed_index": i, "source": case.source, "target": case.target, "psnr_ddim": psnr_d,
                  "psnr_null_text": psnr_n, "ssim_ddim": ssim_d, "ssim_null_text": ssim_n}
        for method, img in (("p2p", edited[2 * i + 1]), ("baseline", plain[i])):
            rows.append({**common, "method": method, **score_pair(reader, case, images[i], img)})
    timing = {"edit": edit, "n": n, "ddim_inversion_s": inv["seconds_ddim"], "null_text_inversion_s": inv["seconds_null"],
              "edit_s": t_edit, "per_image_s": (inv["seconds_null"] + t_edit) / n, "threads": torch.get_num_threads(),
              "device": str(pipe.device)}
    example = {"input": images[0], "ddim": inv["rec_ddim"][0], "null_text": inv["rec_null"][0], "p2p": edited[1],
               "baseline": plain[0], "case": cases[0], "p2p_row": rows[0]}
    return rows, timing, example


def real_eval_summary(per_image, generated_summary):
    """Per (edit type, method): the rates on inverted drawn images (:func:`stages.t2i.summarise`), the
    mean reconstruction PSNRs and null-text's mean gain over DDIM inversion (dB), and the same
    method's rates on generated images (``t2i_eval``'s summary; empty where it has no such edit
    type). The report compares them with the goals."""
    from diffusion_report.stages.t2i import summarise

    df = per_image.copy()
    df["gain_db"] = df["psnr_null_text"] - df["psnr_ddim"]
    scores = ["psnr_ddim", "psnr_null_text", "gain_db"]
    out = summarise(df.drop(columns=scores))
    out = out.merge(df.groupby(["edit", "method"], sort=False)[scores].mean().reset_index(), on=["edit", "method"], how="left")
    gen = generated_summary.rename(columns={"n": "generated_n", "success": "generated_success", "all_kept": "generated_all_kept"})
    out = out.merge(gen[["edit", "method", "generated_n", "generated_success", "generated_all_kept"]], on=["edit", "method"], how="left")
    return out.reindex(columns=REAL_EVAL_SUMMARY_COLUMNS)


def _verdict_line(row: dict) -> str:
    """The reader's verdict on a p2p edit in a few words (a figure's row label)."""
    reached = "target reached" if row["success"] else "target not reached"
    return f"p2p: {reached}, " + ("rest kept" if row["all_kept"] else "rest changed")


def p2p_real_eval(eval_summary: str, p2p_cfg: dict, t2i_cfg: dict, outputs: dict, *, seed: int, device: str = "auto",
                  model_dir: str | None = None, reader_path: str | None = None):
    """Rule p2p_real_eval: ``p2p.real_eval.images`` drawn images per edit type, inverted (DDIM, then
    null-text) and edited with ``t2i.eval``'s settings, scored like the generated pairs of
    ``t2i_eval`` and compared with their rates (``eval_summary``). Writes :data:`REAL_EVAL_ARTIFACTS`."""
    import pandas as pd

    from diffusion_report.io import write_csv
    from diffusion_report.stages.t2i import fit_reader, image_grid_figure

    missing = [k for k in REAL_EVAL_ARTIFACTS if k not in outputs]
    if missing:
        raise ValueError(f"p2p_real_eval: no output path for {', '.join(missing)}")
    rc = p2p_cfg["real_eval"]
    null_text = rc["null_text"]
    pipe = load_model(p2p_cfg, device, model_dir)
    if pipe.vae is not None:
        raise ValueError("p2p.real_eval: only pixel-space models (the embedded one) are inverted here")
    reader = fit_reader(t2i_cfg, seed, reader_path)
    rows, timing, examples = [], [], []
    for edit in rc["edits"]:
        r, t, ex = real_eval_edit_type(pipe, reader, edit, int(rc["images"]), seed, t2i_cfg["eval"], null_text)
        rows += r
        timing.append(t)
        examples.append(ex)
        log.info("%s: %d images inverted and edited in %.1f s", edit, t["n"], t["null_text_inversion_s"] + t["edit_s"])
    per_image = pd.DataFrame(rows).reindex(columns=REAL_EVAL_COLUMNS)
    summary = real_eval_summary(per_image, pd.read_csv(eval_summary))
    write_csv(outputs["per_image"], per_image)
    write_csv(outputs["summary"], summary)
    write_csv(outputs["timing"], pd.DataFrame(timing, columns=REAL_EVAL_TIMING_COLUMNS))
    image_grid_figure(outputs["examples"], [[ex[k] for k in ("input", "ddim", "null_text", "p2p", "baseline")] for ex in examples],
                      [f"{ex['case'].edit} #0\n{ex['case'].source}\n-> {ex['case'].target}\n{_verdict_line(ex['p2p_row'])}" for ex in examples],
                      ["input", "DDIM inv.", "null-text inv.", "p2p edit", "no control"], cell=1.0)
    log.info("summary:\n%s", summary.to_string())
    return summary
