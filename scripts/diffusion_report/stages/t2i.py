"""Text-to-image stage: one function per rule.

* ``t2i_train``   :func:`t2i_train`: verify and copy the shipped shapes model, or train it here;
* ``t2i_reader``  :func:`t2i_reader`: fit the attribute reader and state its accuracy;
* ``t2i_samples`` :func:`t2i_samples`: caption accuracy of the model against guidance;
* ``t2i_eval``    :func:`t2i_eval`: prompt-to-prompt against plain regeneration, per edit type.

Ground-truth evaluation of the embedded text-to-image model and of prompt-to-prompt editing.

Two measurements, both read by :class:`attributes.AttributeReader`:

* :func:`caption_accuracy`: sample the model on random captions (our reference DDIM sampler),
  and count how often the read shape / colour / background / size word match the caption.
* :func:`evaluate_edits`: for each edit type and each of N seeds, generate the (source, target)
  pair from one x_T twice, with the prompt-to-prompt controller and without control (the
  baseline), and measure edit success (the target attribute was reached) and preservation (mask
  IoU, centroid shift and the untouched attributes between the source and the edited image).
"""

from __future__ import annotations

import json
import logging
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from diffusion_report.core.attention import ControllerBatch, make_controller
from diffusion_report.core.prompts import PAIR_OBJECT_WORDS, per_word_steps, prompt_words, split_pair_caption
from diffusion_report.io import make_generator
from diffusion_report.models import attributes, shapes, t2i
from diffusion_report.models.t2i import (
    block_config,
    count_parameters,
    model_config,
    save_model,
    train,
    verify_weights,
)


def loss_figure(path, loss: pd.DataFrame, window: int = 50) -> None:
    """Training loss per step (light) and its running mean over ``window`` steps, log scale."""
    import matplotlib

    from diffusion_report import figures  # noqa: F401 - the project's matplotlib style, the same in every process

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusion_report.io import save_figure

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(loss["step"], loss["loss"], lw=0.5, alpha=0.35, color="C0", label="per step")
    ax.plot(loss["step"], loss["loss"].rolling(window, min_periods=1).mean(), lw=1.5, color="C0", label=f"mean of {window}")
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("epsilon MSE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)


def t2i_train(t2i_cfg: dict, seed: int, outputs: dict, device: str = "auto", weights_dir: str | Path | None = None,
              checkpoint: str | Path | None = None) -> dict:
    """Rule t2i_train: train (t2i.train true) or install the shipped weights (false) from
    ``weights_dir`` (default: ``t2i.weights``; the summary names the configured value).
    Training resumes from ``checkpoint`` when one is given and exists (a killed run loses at most
    250 steps), and removes it once the model is saved.

    ``outputs``: model (folder), loss (CSV), loss_plot (PNG), summary (CSV). Returns the summary row.
    """
    import shutil

    from diffusion_report.io import atomic_path, safetensors_numel, write_csv
    from diffusion_report.models.loading import resolve_device

    cfg = block_config(t2i_cfg, seed)
    if cfg["train"]:
        dev = resolve_device(cfg["training"].get("device", device))
        model, loss = train(cfg, device=dev, checkpoint=checkpoint)
        with atomic_path(outputs["model"]) as tmp:
            save_model(model, tmp, model_config(cfg))
        if checkpoint is not None:
            Path(checkpoint).unlink(missing_ok=True)  # the model folder now holds the result
        source = f"trained here on {dev.type}"
    else:
        src = Path(weights_dir or cfg["weights"])
        verify_weights(src)
        shipped = json.loads((src / "model" / "t2i_config.json").read_text())
        if shipped != json.loads(json.dumps(model_config(cfg))):
            diff = [k for k in shipped if shipped.get(k) != model_config(cfg).get(k)]
            raise ValueError(
                f"t2i: the shipped weights in {src} were trained with a different config (keys: {', '.join(diff)}); "
                "set t2i.train: true to train with this config, or restore those keys"
            )
        with atomic_path(outputs["model"]) as tmp:
            shutil.copytree(src / "model", tmp)
        loss = pd.read_csv(src / "loss.csv")
        source = f"shipped weights {cfg['weights']} (sha256-verified)"
        model = None
    write_csv(outputs["loss"], loss)
    loss_figure(outputs["loss_plot"], loss)
    if model is not None:
        n_unet, n_text = count_parameters(model.unet), count_parameters(model.text_encoder)
    else:  # shipped: counted from the weight files' headers, without loading the model (or diffusers)
        folder = Path(outputs["model"])
        n_unet = safetensors_numel(folder / "unet" / "diffusion_pytorch_model.safetensors")
        n_text = safetensors_numel(folder / "text_encoder" / "model.safetensors")
    tail = max(1, min(200, len(loss) // 10))
    summary = {
        "source": source,
        "steps": int(loss["step"].iloc[-1]),
        "batch_size": int(cfg["training"]["batch_size"]),
        "images_seen": int(loss["step"].iloc[-1]) * int(cfg["training"]["batch_size"]),
        "train_seconds": float(loss["seconds"].iloc[-1]),
        "first_loss": float(loss["loss"].iloc[:tail].mean()),
        "final_loss": float(loss["loss"].iloc[-tail:].mean()),
        "unet_params": n_unet,
        "text_params": n_text,
        "T": int(cfg["schedule"]["T"]),
        "image_size": int(cfg["data"]["image_size"]),
    }
    write_csv(outputs["summary"], pd.DataFrame([summary]))
    log.info("t2i_train: %s", summary)
    return summary


log = logging.getLogger(__name__)


ATTRS = ("shape", "colour", "background")


# --------------------------------------------------------------------------- caption accuracy
def caption_accuracy(
    model: t2i.T2IModel,
    reader: attributes.AttributeReader,
    n: int,
    seed: int,
    guidance_scales: list[float],
    num_steps: int,
    batch_size: int = 64,
) -> tuple[pd.DataFrame, dict[float, torch.Tensor], list[str]]:
    """How often generated images show what their caption says, per guidance scale.

    Captions are ``n`` random generator captions; every guidance scale uses the same captions and
    the same x_T. Returns (table with columns guidance, n, shape_acc, colour_acc, background_acc,
    size_acc (over captions with a size word), all_acc (shape, colour and background all right),
    images per guidance (n, 3, H, W), captions).
    """
    spec = model.spec
    b = shapes.sample(spec, n, make_generator(seed, "t2i/accuracy/captions"))
    x_T = t2i.initial_noise(spec, n, seed, "t2i/accuracy/x_T")
    rows, images = [], {}
    for g in guidance_scales:
        out = torch.cat([t2i.sample(model, b.captions[i : i + batch_size], x_T[i : i + batch_size], num_steps, g) for i in range(0, n, batch_size)])
        images[g] = out
        reads = [reader.read(im) for im in out]
        ok = {a: np.array([getattr(r, a) == getattr(b, a)[i] for i, r in enumerate(reads)]) for a in ATTRS}
        named = np.array([b.names_colour(i) for i in range(len(b))])  # a caption without a colour word: any colour is right
        ok["colour"] = ok["colour"] | ~named
        sized = [i for i, w in enumerate(b.size_word) if w]
        size_ok = [reads[i].size_word == b.size_word[i] for i in sized]
        rows.append(
            {
                "guidance": float(g),
                "n": n,
                "shape_acc": ok["shape"].mean(),
                "colour_acc": ok["colour"][named].mean() if named.any() else float("nan"),
                "background_acc": ok["background"].mean(),
                "size_acc": float(np.mean(size_ok)) if size_ok else float("nan"),
                "all_acc": (ok["shape"] & ok["colour"] & ok["background"]).mean(),
            }
        )
    return pd.DataFrame(rows), images, b.captions


# --------------------------------------------------------------------------- reader rule
def _reader_recipe(t2i_cfg: dict, seed: int) -> dict:
    """What the attribute reader is fitted from (as JSON gives it back): saved beside the classifier
    by rule t2i_reader and compared when a later rule reads it."""
    rc = t2i_cfg["reader"]
    return json.loads(json.dumps({"data": t2i_cfg["data"], "train_images": int(rc["train_images"]), "noise": float(rc["noise"]), "seed": seed}))


def fit_reader(t2i_cfg: dict, seed: int, path: str | Path | None = None) -> attributes.AttributeReader:
    """The attribute reader of the config (deterministic: same config -> same classifier): read
    from ``path`` (rule t2i_reader's ``reader.json``) when given, else fitted here."""
    spec = shapes.ShapeSpec.from_config(t2i_cfg["data"])
    rc = t2i_cfg["reader"]
    if path is None:
        return attributes.AttributeReader(spec).fit(int(rc["train_images"]), seed, float(rc["noise"]))
    saved = json.loads(Path(path).read_text())
    wanted = _reader_recipe(t2i_cfg, seed)
    fitted_for = {k: saved.get(k) for k in wanted}
    if fitted_for != wanted:
        differ = ", ".join(k for k in wanted if fitted_for[k] != wanted[k])
        raise ValueError(f"{path}: the attribute reader was fitted for another config ({differ} differ); rerun rule t2i_reader")
    return attributes.AttributeReader.from_state(spec, saved["classifier"])


def t2i_reader(t2i_cfg: dict, seed: int, out_csv: str, out_reader: str | None = None) -> pd.DataFrame:
    """Rule t2i_reader: fit the attribute reader once, save it (``out_reader``: JSON, read by every
    rule that scores images through :func:`fit_reader`) and state its accuracy on held-out
    generated images (CSV)."""
    from diffusion_report.io import atomic_path, write_csv

    reader = fit_reader(t2i_cfg, seed)
    df = attributes.reader_accuracy(reader, int(t2i_cfg["reader"]["test_images"]), seed)
    write_csv(out_csv, df)
    if out_reader:
        saved = {**_reader_recipe(t2i_cfg, seed), "classifier": reader.state()}
        with atomic_path(out_reader) as tmp:
            Path(tmp).write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")
    log.info("reader accuracy:\n%s", df.to_string())
    return df


# --------------------------------------------------------------------------- figures
def image_grid_figure(path, images: list[list[torch.Tensor]], row_labels: list[str], col_labels: list[str] | None = None, cell: float = 0.9) -> None:
    """A grid of small images (each (3, H, W) in [-1, 1]) drawn with nearest-neighbour upscaling,
    cells shrunk (``figures.fit_cell``) so that the grid prints at its own size."""
    import matplotlib

    from diffusion_report import figures  # the project's matplotlib style and page size

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusion_report.io import save_figure, to_uint8

    rows, cols = len(images), max(len(r) for r in images)
    cell = figures.fit_cell(cell, rows, cols, 2.6, 0.4)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell + 2.6, rows * cell + 0.4), dpi=100, squeeze=False)
    for i, row in enumerate(images):
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                ax.imshow(to_uint8(row[j]), interpolation="nearest")
            else:
                ax.axis("off")
            if i == 0 and col_labels:  # wrapped to the cell's width (at hyphens and spaces), or neighbours run together
                ax.set_title(textwrap.fill(col_labels[j], width=max(6, int(cell * 72 / (0.6 * figures.MIN_FONT_PT)))),
                             fontsize=figures.MIN_FONT_PT)
        axes[i, 0].set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=figures.MIN_FONT_PT)
    fig.tight_layout(pad=0.3)
    save_figure(path, fig)
    plt.close(fig)


# --------------------------------------------------------------------------- samples rule
def t2i_samples(model_dir: str, t2i_cfg: dict, seed: int, outputs: dict, reader_path: str | None = None) -> pd.DataFrame:
    """Rule t2i_samples: sample grid (captions x 8 seeds) and caption accuracy per guidance (CSV)."""
    from diffusion_report.io import write_csv

    sc = t2i_cfg["samples"]
    model = t2i.load_model(model_dir)
    reader = fit_reader(t2i_cfg, seed, reader_path)
    df, _, _ = caption_accuracy(model, reader, int(sc["num_images"]), seed, [float(g) for g in sc["guidance_scales"]], int(sc["num_steps"]))
    write_csv(outputs["accuracy"], df)
    log.info("caption accuracy:\n%s", df.to_string())
    b = shapes.sample(model.spec, int(sc["grid_captions"]), make_generator(seed, "t2i/samples/grid"))
    g = float(t2i_cfg["eval"]["guidance_scale"])
    rows = []
    for i, cap in enumerate(b.captions):
        x_T = t2i.initial_noise(model.spec, 8, seed, f"t2i/samples/grid/{i}")
        rows.append(list(t2i.sample(model, [cap] * 8, x_T, int(sc["num_steps"]), g)))
    image_grid_figure(outputs["grid"], rows, b.captions)
    return df


# --------------------------------------------------------------------------- prompt-to-prompt evaluation
MAX_SHIFT_PX = 1.0  # "in place": the object's centroid moves at most this far (the layout goal)
EDIT_TYPES = ("shape_swap", "colour_swap", "background_swap", "refine_big", "refine_colour", "reweight_big")
PAIR_EDIT_TYPES = ("pair_colour_swap", "pair_shape_swap")  # two objects: one object's colour / shape swapped


@dataclass
class EditCase:
    """One edit of one seed: prompts, p2p controller settings and what counts as success."""

    edit: str
    index: int
    source: str
    target: str
    mode: str  # replace | refine | reweight
    attribute: str  # shape | colour | background | size
    target_value: str
    untouched: tuple[str, ...]
    reweight: dict | None = None
    source_truth: dict = field(default_factory=dict)  # what the source caption names (and, drawn, the image shows)
    obj: int | None = None  # two objects: which one the edit names (0 left, 1 right); None: one object


def edit_cases(spec: shapes.ShapeSpec, edit: str, n: int, seed: int, reweight_scale: float) -> list[EditCase]:
    """``n`` random cases of one edit type, drawn from ``make_generator(seed, 't2i/eval/<edit>')``."""
    if edit in PAIR_EDIT_TYPES:
        if spec.two_objects <= 0:
            raise ValueError(f"t2i.eval.edits: {edit} needs a model trained on two-object captions (t2i.data.two_objects > 0)")
        g = make_generator(seed, f"t2i/eval/{edit}")
        return pair_cases(spec, edit, shapes.sample_pairs(spec, n, g), g)
    if edit not in EDIT_TYPES:
        raise ValueError(f"t2i.eval.edits: unknown edit type {edit!r}; allowed: {', '.join(EDIT_TYPES + PAIR_EDIT_TYPES)}")
    if edit == "refine_colour" and spec.colour_word_prob >= 1.0:
        raise ValueError("t2i.eval.edits: refine_colour needs a model trained on captions without a colour word "
                         "(t2i.data.colour_word_prob < 1)")
    g = make_generator(seed, f"t2i/eval/{edit}")
    return _cases(spec, edit, shapes.sample(spec, n, g), g, reweight_scale)


def pair_cases(spec: shapes.ShapeSpec, edit: str, b: shapes.PairBatch, g: torch.Generator) -> list[EditCase]:
    """The cases of a two-object edit type for the pairs of ``b``: the object to edit (left or
    right) and its new colour / shape drawn from ``g``; the other object and the background are
    what the edit must leave alone."""
    attr = edit.split("_")[1]
    options = list(spec.colours) if attr == "colour" else list(spec.shapes)
    cases = []
    for i in range(len(b)):
        objects, background = [tuple(o) for o in b.objects[i]], b.background[i]
        k = int(torch.randint(2, (1,), generator=g))
        colour, shape = objects[k]
        old = colour if attr == "colour" else shape
        others = [v for v in options if v != old]
        new = others[int(torch.randint(len(others), (1,), generator=g))]
        edited = list(objects)
        edited[k] = (new, shape) if attr == "colour" else (colour, new)
        truth = {"objects": objects, "background": background}
        untouched = ("shape" if attr == "colour" else "colour", "background", "other")
        cases.append(EditCase(edit, i, shapes.pair_caption(objects, background), shapes.pair_caption(edited, background),
                              "replace", attr, new, untouched, None, truth, k))
    return cases


DRAWN_EDIT_TYPES = ("shape_swap", "colour_swap", "background_swap", "refine_big") + PAIR_EDIT_TYPES  # not reweight_big: its prompt says "big"


def drawn_cases(spec: shapes.ShapeSpec, edit: str, n: int, seed: int) -> tuple[list[EditCase], torch.Tensor]:
    """``n`` drawn images and their cases of one edit type (``make_generator(seed, 't2i/real_eval/<edit>')``):
    the image is drawn by the shapes generator, so its attributes are known, and the case's source
    prompt describes it (shape, colour, background; no size word). A two-object type draws pairs
    (:func:`shapes.sample_pairs`, as the model was trained on) and its cases are :func:`pair_cases`'.
    Returns (cases, images (n, 3, H, W) in [-1, 1]). Not reweight_big: its prompt says "big", which a
    drawn image of any size would not show."""
    if edit not in DRAWN_EDIT_TYPES:
        raise ValueError(f"p2p.real_eval.edits: unknown edit type {edit!r}; allowed: {', '.join(DRAWN_EDIT_TYPES)}")
    g = make_generator(seed, f"t2i/real_eval/{edit}")
    if edit in PAIR_EDIT_TYPES:
        if spec.two_objects <= 0:
            raise ValueError(f"p2p.real_eval.edits: {edit} needs a model trained on two-object captions (t2i.data.two_objects > 0)")
        b = shapes.sample_pairs(spec, n, g)
        return pair_cases(spec, edit, b, g), b.images
    b = shapes.sample(spec, n, g)
    return _cases(spec, edit, b, g, 1.0), b.images


def _cases(spec: shapes.ShapeSpec, edit: str, b: shapes.ShapeBatch, g: torch.Generator, reweight_scale: float) -> list[EditCase]:
    """The cases of one edit type for the shapes of ``b`` (their attributes are the source's truth);
    a swap draws its new value from ``g``."""
    options = {"shape": list(spec.shapes), "colour": list(spec.colours), "background": list(spec.backgrounds)}
    cases = []
    for i in range(len(b)):
        truth = {"shape": b.shape[i], "colour": b.colour[i], "background": b.background[i]}
        src = shapes.caption(truth["colour"], truth["shape"], truth["background"])
        if edit in ("shape_swap", "colour_swap", "background_swap"):
            attr = edit.split("_")[0]
            others = [v for v in options[attr] if v != truth[attr]]
            new = others[int(torch.randint(len(others), (1,), generator=g))]
            tgt_truth = dict(truth, **{attr: new})
            tgt = shapes.caption(tgt_truth["colour"], tgt_truth["shape"], tgt_truth["background"])
            untouched = tuple(a for a in ATTRS if a != attr)
            cases.append(EditCase(edit, i, src, tgt, "replace", attr, new, untouched, None, truth))
        elif edit == "refine_big":
            tgt = shapes.caption(truth["colour"], truth["shape"], truth["background"], "big")
            cases.append(EditCase(edit, i, src, tgt, "refine", "size", "big", ATTRS, None, truth))
        elif edit == "refine_colour":  # a colour word added to a caption that names none: the colour is the model's
            new = options["colour"][int(torch.randint(len(options["colour"]), (1,), generator=g))]
            src = shapes.caption("", truth["shape"], truth["background"])
            tgt = shapes.caption(new, truth["shape"], truth["background"])
            named = {a: truth[a] for a in ("shape", "background")}
            cases.append(EditCase(edit, i, src, tgt, "refine", "colour", new, ("shape", "background"), None, named))
        else:  # reweight_big: amplify "big" in a prompt that already says it
            src = tgt = shapes.caption(truth["colour"], truth["shape"], truth["background"], "big")
            cases.append(EditCase(edit, i, src, tgt, "reweight", "size", "big", ATTRS, {"words": ["big"], "scale": float(reweight_scale)}, truth))
    return cases


def score_pair(reader: attributes.AttributeReader, case: EditCase, source_img: torch.Tensor, edited_img: torch.Tensor) -> dict:
    """Success and preservation of one (source, edited) pair of images (3, H, W) each."""
    if case.obj is not None:
        return score_pair_reads(case, reader.read_pair(source_img), reader.read_pair(edited_img), source_img, edited_img)
    return score_reads(case, reader.read(source_img), reader.read(edited_img), source_img, edited_img)


def score_reads(case: EditCase, rs: attributes.Reading, re_: attributes.Reading, source_img: torch.Tensor, edited_img: torch.Tensor) -> dict:
    """:func:`score_pair` from the reader's readings of the two images (for callers that also use the readings)."""
    if case.obj is not None:
        raise ValueError(f"{case.edit}: a two-object case is scored by score_pair_reads")
    reached = (re_.size_word == case.target_value) if case.attribute == "size" else getattr(re_, case.attribute) == case.target_value
    kept = [getattr(rs, a) == getattr(re_, a) for a in case.untouched]
    source_ok = all(getattr(rs, a) == case.source_truth[a] for a in ATTRS if a in case.source_truth)
    return _scores(source_ok, reached, kept, rs, re_, source_img, edited_img, float("nan"))


def _scores(source_ok: bool, reached: bool, kept: list[bool], s: attributes.Reading, e: attributes.Reading,
            source_img: torch.Tensor, edited_img: torch.Tensor, kept_other: float) -> dict:
    """One metric row: the verdicts given, and the layout measures of the edited object read as ``s``
    in the source and ``e`` in the edited image (mask IoU, centroid shift, radius change) and the
    images' pixel MAE."""
    return {
        "source_ok": bool(source_ok),
        "success": bool(reached),
        "untouched_kept": float(np.mean(kept)),
        "all_kept": bool(all(kept)),
        "mask_iou": attributes.iou(s.mask, e.mask),
        "centroid_shift_px": centroid_shift(s, e),
        "radius_change_px": e.radius - s.radius,
        "pixel_mae": float((source_img - edited_img).abs().mean()),
        "other_kept": kept_other,
    }


def other_kept(rs: attributes.Reading, re_: attributes.Reading) -> bool:
    """The object an edit does not name keeps its shape, its colour and its place (centroid moved
    at most :data:`MAX_SHIFT_PX`) between the source reading ``rs`` and the edited one ``re_``."""
    return rs.shape == re_.shape and rs.colour == re_.colour and centroid_shift(rs, re_) <= MAX_SHIFT_PX


def centroid_shift(s: attributes.Reading, e: attributes.Reading) -> float:
    """How far (px) the object read as ``s`` in one image and ``e`` in another moved; nan when
    either image has no object (a nan compares false with any bound)."""
    return float(np.hypot(s.cx - e.cx, s.cy - e.cy)) if s.mask.any() and e.mask.any() else float("nan")


def pair_source_ok(rs: tuple[attributes.Reading, attributes.Reading], objects, background: str) -> bool:
    """Whether :meth:`~attributes.AttributeReader.read_pair`'s readings (left, right) of a source
    show its caption: ``objects`` [(colour, shape) left, right] on ``background``."""
    return rs[0].background == background and all((r.colour, r.shape) == tuple(o) for r, o in zip(rs, objects))


def score_pair_reads(case: EditCase, rs: tuple[attributes.Reading, attributes.Reading], re_: tuple[attributes.Reading, attributes.Reading],
                     source_img: torch.Tensor, edited_img: torch.Tensor) -> dict:
    """:func:`score_reads` for a two-object case from :meth:`~attributes.AttributeReader.read_pair`'s
    readings (left, right) of the source and the edited image: success, mask IoU, shift and size
    change are the edited object's; ``other_kept`` is :func:`other_kept` of the other object;
    ``untouched_kept`` averages the edited object's other attribute, the background and
    ``other_kept``."""
    k = case.obj
    s_k, e_k = rs[k], re_[k]
    reached = getattr(e_k, case.attribute) == case.target_value
    kept_other = other_kept(rs[1 - k], re_[1 - k])
    same = "shape" if case.attribute == "colour" else "colour"
    kept = [getattr(s_k, same) == getattr(e_k, same), s_k.background == e_k.background, kept_other]
    source_ok = pair_source_ok(rs, case.source_truth["objects"], case.source_truth["background"])
    return _scores(source_ok, reached, kept, s_k, e_k, source_img, edited_img, float(kept_other))


def case_batch(pipe, cases: list[EditCase], seed: int, rows: int = 2) -> tuple[list[str], torch.Tensor]:
    """The prompts of each case in one batch, and each case's own x_T (``t2i/eval/<edit>/<i>``) repeated
    for them: (source, target) with ``rows`` 2, (source, target, target) with 3 (prompt-to-prompt's pair,
    then the no-control target): (rows * N prompts, x_T (rows * N, C, h, w))."""
    from diffusion_report.models.text2image import initial_latents

    prompts = [p for c in cases for p in (c.source, c.target, c.target)[:rows]]
    x_T = torch.cat([initial_latents(pipe, seed, f"t2i/eval/{c.edit}/{c.index}") for c in cases]).repeat_interleave(rows, dim=0)
    return prompts, x_T


def case_cross_steps(case: EditCase, cross: float, edited_word: float | None = None) -> float | dict:
    """The cross-attention injection of one case: ``cross`` for every token, or, for a word swap with
    ``edited_word`` set, the reference's per-word schedule ``{default: cross, <new word>: edited_word}``
    (``t2i.eval.edited_word_cross_replace_steps``: the swapped-in word attends by its own map sooner)."""
    if edited_word is None or case.mode != "replace":
        return cross
    return {"default": cross, case.target_value: edited_word}


def pair_object_words(case: EditCase) -> list[int]:
    """Word places (0-based) of the edited object's colour and shape words in a two-object case's
    captions (:data:`core.prompts.PAIR_OBJECT_WORDS`: "a red circle and a blue square on ...", the
    left object is words 1-2, the right one 5-6): by place, since one word may name both objects."""
    if case.obj is None or any(split_pair_caption(t) is None for t in (case.source, case.target)):
        raise ValueError(f"{case.edit}: {case.source!r} -> {case.target!r} is not a two-object case")
    return list(PAIR_OBJECT_WORDS[case.obj])


def case_controller(pipe, case: EditCase, num_steps: int, cross: float, self_: float, self_max_tokens: int | None = None,
                    edited_word: float | None = None, two_object: dict | None = None):
    """The prompt-to-prompt controller of one case (its mode; a reweight edits its own prompt);
    ``edited_word``: as :func:`case_cross_steps`. ``two_object`` (``t2i.eval.two_object``), for a
    two-object case: ``self_replace_steps`` replaces ``self_`` where set, and ``blend_threshold``
    adds a local blend (paper, sec. 3.2) on the edited object's colour and shape words, chosen by
    place (:func:`pair_object_words`), with that mask threshold."""
    blend = {}
    if case.obj is not None and two_object:
        if two_object.get("self_replace_steps") is not None:
            self_ = float(two_object["self_replace_steps"])
        if two_object.get("blend_threshold") is not None:
            blend = {"blend_words": pair_object_words(case), "mask_threshold": float(two_object["blend_threshold"])}
    return make_controller(case.mode, [case.source, case.target], pipe.tokenizer, num_steps, case_cross_steps(case, cross, edited_word),
                           self_, reweight=case.reweight, **({"base_mode": "none"} if case.mode == "reweight" else {}),
                           self_max_tokens=self_max_tokens, **blend)


def case_controllers(pipe, cases: list[EditCase], num_steps: int, cross: float, self_: float,
                     self_max_tokens: int | None = None, edited_word: float | None = None,
                     two_object: dict | None = None) -> ControllerBatch:
    """One prompt-to-prompt controller per case (:func:`case_controller`), batched."""
    return ControllerBatch([case_controller(pipe, c, num_steps, cross, self_, self_max_tokens, edited_word, two_object) for c in cases])


def run_cases(pipe, reader, cases: list[EditCase], seed: int, num_steps: int, guidance: float, cross: float, self_: float,
              self_max_tokens: int | None = None, shared_source: bool = True,
              edited_word: float | None = None, two_object: dict | None = None) -> list[tuple[list[dict], dict]]:
    """Both methods on each case, each case from its own x_T, all cases in one batch.

    Returns per case (two metric rows, images {source, p2p, baseline, p2p_source} and
    ``plain_maps``, the (2, h, w, L) cross-attention maps of the plain source and target). The cases of
    one edit type share the controller's windows, so the batch gives each case what it alone gives
    (:class:`~diffusion_report.core.attention.ControllerBatch`), up to float rounding.
    ``self_max_tokens``: self-attention is injected at maps of at most this many pixels (None:
    the attention module's default, 1/16 of the image but at least 8x8). ``edited_word``: the
    swapped-in word's own injection fraction (:func:`case_cross_steps`; None: ``cross``);
    ``two_object``: the two-object cases' settings (:func:`case_controller`).

    ``shared_source`` (the default): each case is three rows of one batch, its source, the p2p
    target and the no-control target (:class:`~diffusion_report.core.attention.Unedited`):
    prompt-to-prompt leaves the source's row alone, so both methods are scored against the very
    same source image and it is sampled once (3 rows a case instead of 4). False: the two
    methods as two batches, each with its own source (``p2p_source`` and ``source``, equal up to
    float rounding), the way the stage ran before round 10 (kept for the benchmark and its test).
    """
    from diffusion_report.core.attention import Unedited
    from diffusion_report.models.text2image import generate

    if not cases:
        return []
    if shared_source:
        prompts, x_T = case_batch(pipe, cases, seed, rows=3)
        members = []
        for c in cases:
            members += [case_controller(pipe, c, num_steps, cross, self_, self_max_tokens, edited_word, two_object), Unedited([c.target])]
        images, _ = generate(pipe, prompts, x_T, num_steps, guidance, ControllerBatch(members))
        triples = [(images[3 * i], images[3 * i], images[3 * i + 1], images[3 * i + 2]) for i in range(len(cases))]
        maps = [torch.stack([members[2 * i].average()[0], members[2 * i + 1].average()[0]]) for i in range(len(cases))]
    else:
        prompts, x_T = case_batch(pipe, cases, seed)
        edited, _ = generate(pipe, prompts, x_T, num_steps, guidance,
                             case_controllers(pipe, cases, num_steps, cross, self_, self_max_tokens, edited_word, two_object))
        plain, store = generate(pipe, prompts, x_T, num_steps, guidance)
        avg = store.average()  # (2N, h, w, L): where each plain image's prompt tokens attend
        triples = [(plain[2 * i], edited[2 * i], edited[2 * i + 1], plain[2 * i + 1]) for i in range(len(cases))]
        maps = [avg[2 * i: 2 * i + 2] for i in range(len(cases))]
    out = []
    for case, (source, p2p_source, p2p, baseline), m in zip(cases, triples, maps):
        rows = []
        for method, (src, tgt) in (("p2p", (p2p_source, p2p)), ("baseline", (source, baseline))):
            row = {"edit": case.edit, "seed_index": case.index, "method": method, "source": case.source, "target": case.target}
            row.update(score_pair(reader, case, src, tgt))
            rows.append(row)
        out.append((rows, {"source": source, "p2p": p2p, "baseline": baseline, "p2p_source": p2p_source, "plain_maps": m}))
    return out


def run_case(pipe, reader, case: EditCase, seed: int, num_steps: int, guidance: float, cross: float, self_: float,
             self_max_tokens: int | None = None, edited_word: float | None = None, two_object: dict | None = None) -> tuple[list[dict], dict]:
    """:func:`run_cases` for one case."""
    return run_cases(pipe, reader, [case], seed, num_steps, guidance, cross, self_, self_max_tokens, edited_word=edited_word,
                     two_object=two_object)[0]


SUMMARY_COLUMNS = ["source_ok", "success", "all_kept", "untouched_kept", "mask_iou", "centroid_shift_px", "radius_change_px", "pixel_mae",
                   "other_kept", "other_kept_source_ok"]


def summarise(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Mean of each metric per (edit, method), edits in first-seen order, p2p before baseline;
    ``other_kept_source_ok`` is ``other_kept``'s mean over the seeds whose source the reader finds
    as captioned (``source_ok``): it separates what the controller does from what the model draws."""
    df = per_seed.copy()
    for c in ("source_ok", "success", "all_kept"):
        df[c] = df[c].astype(float)
    if "other_kept" in df:  # the other object kept over the seeds whose source is as captioned (nan where none is)
        df["other_kept_source_ok"] = df["other_kept"].where(df["source_ok"] == 1.0)
    columns = [c for c in SUMMARY_COLUMNS if c in df]  # other_kept: written by the evaluations, not by every caller
    out = df.groupby(["edit", "method"], sort=False)[columns].mean().reset_index()
    out.insert(2, "n", df.groupby(["edit", "method"], sort=False).size().values)
    return out


LOCALISATION_COLUMNS = ["word", "images", "inside", "outside", "ratio", "share_above_1"]
CAPTION_ROLES = ("a", "size word", "colour word", "shape word", "on", "second a", "background colour", "background")


def caption_roles(spec: shapes.ShapeSpec, prompt: str) -> dict[str, int] | None:
    """{role: token position} of a caption in :func:`shapes.caption`'s form (position 0 is the
    start token, each word one token), or None when ``prompt`` is not such a caption."""
    parsed = shapes.parse_caption(spec, prompt)
    return None if parsed is None else _roles(parsed)


def _roles(parsed: dict) -> dict[str, int]:
    """{role: token position} of a parsed caption (:func:`shapes.parse_caption`)."""
    roles = [r for r in CAPTION_ROLES if (r != "size word" or parsed["size_word"]) and (r != "colour word" or parsed["colour"])]
    return {r: i + 1 for i, r in enumerate(roles)}


def attention_localisation(reader: attributes.AttributeReader, records: list[tuple[str, torch.Tensor, torch.Tensor]]) -> pd.DataFrame:
    """How much of each caption word's cross-attention lies on the object, over plainly sampled images.

    ``records``: (prompt, image (3, H, W), maps (h, w, L)). An image counts when the reader reads
    the prompt's shape, colour and background in it (so its mask is the object the prompt names).
    Per caption role: the mean attention inside the object's mask and outside it over those images,
    their ratio (above 1: the word's map lies on the object, which is the layout prompt-to-prompt
    injects) and the share of images in which inside exceeds outside.
    """
    from diffusion_report.core.attention import inside_outside

    ins, outs = {r: [] for r in CAPTION_ROLES}, {r: [] for r in CAPTION_ROLES}
    for prompt, img, maps in records:
        parsed = shapes.parse_caption(reader.spec, prompt)
        if parsed is None:
            continue
        rd = reader.read(img)
        if not rd.mask.any() or rd.mask.all() or any(parsed[a] and getattr(rd, a) != parsed[a] for a in ATTRS):
            continue
        i, o = inside_outside(maps[None], torch.from_numpy(rd.mask)[None])
        for role, pos in _roles(parsed).items():
            ins[role].append(float(i[0, pos]))
            outs[role].append(float(o[0, pos]))
    rows = []
    for role in CAPTION_ROLES:
        if not ins[role]:
            continue
        a, b = np.array(ins[role]), np.array(outs[role])
        rows.append({"word": role, "images": len(a), "inside": float(a.mean()), "outside": float(b.mean()),
                     "ratio": float(a.mean() / max(b.mean(), 1e-12)), "share_above_1": float((a > b).mean())})
    return pd.DataFrame(rows, columns=LOCALISATION_COLUMNS)


def evaluate_edits(pipe, reader, t2i_cfg: dict, seed: int, keep_examples: int = 2, records: list | None = None,
                   shared_source: bool = True) -> tuple[pd.DataFrame, dict]:
    """Every configured edit type over ``t2i.eval.seeds`` cases. Returns (per-seed rows, examples).

    ``records``, when given, collects (prompt, image, maps) of every plain source and target (for
    :func:`attention_localisation`). ``shared_source``: as :func:`run_cases`."""
    ec = t2i_cfg["eval"]
    spec = reader.spec
    rows, examples = [], {}
    for edit in ec["edits"]:
        cases = edit_cases(spec, edit, int(ec["seeds"]), seed, float(ec["reweight_scale"]))
        batch = int(ec.get("batch_cases") or len(cases))
        for start in range(0, len(cases), batch):
            chunk = cases[start: start + batch]
            done = run_cases(pipe, reader, chunk, seed, int(ec["num_steps"]), float(ec["guidance_scale"]),
                             float(ec["cross_replace_steps"]), float(ec["self_replace_steps"]), ec.get("self_max_tokens"),
                             shared_source=shared_source, edited_word=ec.get("edited_word_cross_replace_steps"),
                             two_object=ec.get("two_object"))
            for case, (r, imgs) in zip(chunk, done):
                rows.extend(r)
                if records is not None:
                    records.append((case.source, imgs["source"], imgs["plain_maps"][0]))
                    records.append((case.target, imgs["baseline"], imgs["plain_maps"][1]))
                if case.index < keep_examples:
                    examples[(edit, case.index)] = (case, imgs)
        log.info("%s: done (%d cases)", edit, int(ec["seeds"]))
    return pd.DataFrame(rows), examples


def t2i_eval(model_dir: str, t2i_cfg: dict, seed: int, outputs: dict, device: str = "cpu", reader_path: str | None = None) -> pd.DataFrame:
    """Rule t2i_eval: per-seed CSV, summary CSV, an examples figure (source | p2p | no control) and
    the attention localisation of the caption words (:func:`attention_localisation`) on the plain images."""
    from diffusion_report.io import write_csv
    from diffusion_report.models.text2image import load_text2image

    pipe = load_text2image(model_dir, config_key="t2i.weights", device=device, scheduler="ddim")
    reader = fit_reader(t2i_cfg, seed, reader_path)
    records: list = []
    per_seed, examples = evaluate_edits(pipe, reader, t2i_cfg, seed, records=records)
    summary = summarise(per_seed)
    write_csv(outputs["per_seed"], per_seed)
    write_csv(outputs["summary"], summary)
    localisation = attention_localisation(reader, records)
    write_csv(outputs["localisation"], localisation)
    log.info("attention localisation:\n%s", localisation.to_string())
    rows, labels = [], []
    for (edit, i), (case, imgs) in examples.items():
        rows.append([imgs["source"], imgs["p2p"], imgs["baseline"]])
        labels.append(f"{edit} #{i}\n{case.source}\n-> {case.target}")
    image_grid_figure(outputs["examples"], rows, labels, ["source", "prompt-to-prompt", "no control"], cell=1.0)
    log.info("summary:\n%s", summary.to_string())
    return summary


# --------------------------------------------------------------------------- showcased edits
ATTRIBUTE_OF = {"shape_swap": "shape", "colour_swap": "colour", "background_swap": "background",
                "refine_big": "size", "refine_colour": "colour", "reweight_big": "size", "pair_colour_swap": "colour",
                "pair_shape_swap": "shape"}
SHOWCASE_COLUMNS = ["edit", "edit_type", "method", "measured", "source_ok", "reached", "untouched_kept", "centroid_shift_px",
                    "mask_iou", "success", "cause", "eval_n", "eval_success", "eval_success_baseline", "settings_differ"]


def _cross_spec(steps) -> float | dict | None:
    """A cross_replace_steps value in one form: the fraction itself when every token has it, else
    {"default": f, word: f, ...} listing only the words whose fraction differs from the default."""
    if steps is None:
        return None
    default, per_word = per_word_steps(steps)
    words = {w: float(f) for w, f in sorted(per_word.items()) if float(f) != float(default)}
    return {"default": float(default), **words} if words else float(default)


def _eval_cross_spec(edit: dict, eval_cfg: dict) -> float | dict | None:
    """What the evaluation injects for an edit like ``edit`` (:func:`case_cross_steps`): the
    swapped-in words of a word swap at ``edited_word_cross_replace_steps`` when it is set."""
    cross, edited = eval_cfg.get("cross_replace_steps"), eval_cfg.get("edited_word_cross_replace_steps")
    if cross is None or edited is None or edit.get("mode") != "replace":
        return _cross_spec(cross)
    new = [t for s, t in zip(prompt_words(edit["source"]), prompt_words(edit["target"])) if s != t]
    return _cross_spec({"default": cross, **{w: edited for w in new}})


def settings_differ(edit: dict, p2p_cfg: dict, eval_cfg: dict) -> str:
    """The settings in which a showcased edit differs from the evaluation ("" when none): steps,
    guidance, cross/self injection fractions, the largest map with injected self-attention."""
    pairs = {
        "steps": (p2p_cfg.get("num_inference_steps"), eval_cfg.get("num_steps")),
        "guidance": (p2p_cfg.get("guidance_scale"), eval_cfg.get("guidance_scale")),
        "cross_replace_steps": (_cross_spec(edit.get("cross_replace_steps", 0.8)), _eval_cross_spec(edit, eval_cfg)),
        "self_replace_steps": (edit.get("self_replace_steps", 0.4), eval_cfg.get("self_replace_steps")),
        "self_max_tokens": (p2p_cfg.get("self_max_tokens"), eval_cfg.get("self_max_tokens")),
    }
    def say(v) -> str:
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}: {f:g}" for k, f in v.items()) + "}"
        return "default" if v is None else str(v)

    out = []
    for key, (shown, evaluated) in pairs.items():
        same = shown == evaluated or (isinstance(shown, (int, float)) and isinstance(evaluated, (int, float)) and float(shown) == float(evaluated))
        if not same:
            out.append(f"{key} {say(shown)} here, {say(evaluated)} in the evaluation")
    return "; ".join(out)


def edit_type(spec: shapes.ShapeSpec, edit: dict) -> tuple[str | None, str]:
    """The evaluation's edit type of a configured ``p2p.edits`` entry, read from its prompts:
    (type or None, why not). A word swap of one attribute is ``<attribute>_swap``; adding "big" is
    ``refine_big``, adding a colour to a caption that names none ``refine_colour``; reweighting "big"
    in a prompt that says it is ``reweight_big``."""
    pair = _pair_edit(spec, edit)
    if pair is not None:
        return pair
    src, tgt = shapes.parse_caption(spec, edit["source"]), shapes.parse_caption(spec, edit["target"])
    if src is None or tgt is None:
        return None, "its prompts are not captions of the embedded model's form"
    changed = [a for a in ("shape", "colour", "background", "size_word") if src[a] != tgt[a]]
    if edit["mode"] == "reweight" and not changed:
        words = list((edit.get("reweight") or {}).get("words", []))
        if words == ["big"] and src["size_word"] == "big":
            return "reweight_big", ""
        return None, (f"the reader reads attribute names, not how strongly an attribute shows, so reweighting "
                      f"{', '.join(repr(w) for w in words)} is not measured")
    if len(changed) == 1 and changed[0] in ("shape", "colour", "background") and edit["mode"] == "replace" and src["colour"] and tgt["colour"]:
        return f"{changed[0]}_swap", ""
    if changed == ["size_word"] and tgt["size_word"] == "big" and not src["size_word"] and edit["mode"] == "refine":
        return "refine_big", ""
    if changed == ["colour"] and not src["colour"] and edit["mode"] == "refine":
        return "refine_colour", ""
    return None, "the evaluation has no edit type that changes " + (", ".join(changed) or "nothing")


def _pair_edit(spec: shapes.ShapeSpec, edit: dict) -> tuple[str | None, str] | None:
    """:func:`edit_type` of an edit between two-object captions (None when they are not both such
    captions): one object's colour or shape replaced is ``pair_<attribute>_swap``."""
    src, tgt = shapes.parse_pair_caption(spec, edit["source"]), shapes.parse_pair_caption(spec, edit["target"])
    if src is None or tgt is None:
        return None
    changed = [(k, a) for k in range(2) for i, a in enumerate(("colour", "shape")) if src["objects"][k][i] != tgt["objects"][k][i]]
    if src["background"] != tgt["background"]:
        changed.append((None, "background"))
    if len(changed) == 1 and changed[0][0] is not None and edit["mode"] == "replace":
        return f"pair_{changed[0][1]}_swap", ""
    return None, "the evaluation's two-object edit types change the colour or the shape of one object (replace), not " + (
        ", ".join(a if k is None else f"object {k + 1}'s {a}" for k, a in changed) or "nothing")


def judge_pair(reader: attributes.AttributeReader, etype: str, source_caption: dict, target_caption: dict,
               source_img, edited_img) -> dict:
    """:func:`judge` for a two-object edit (:func:`shapes.parse_pair_caption` captions): the edited
    object reaches its target and stays in place, its other attribute and the background are kept,
    and the other object keeps its shape, colour and place (:func:`other_kept`)."""
    attr = etype.split("_")[1]
    src_objs, tgt_objs = source_caption["objects"], target_caption["objects"]
    k = next(i for i in range(2) if tuple(src_objs[i]) != tuple(tgt_objs[i]))
    rs, re_ = reader.read_pair(source_img), reader.read_pair(edited_img)
    source_ok = pair_source_ok(rs, src_objs, source_caption["background"])
    reached = getattr(re_[k], attr) == tgt_objs[k][0 if attr == "colour" else 1]
    same = "shape" if attr == "colour" else "colour"
    changed = [f"{a} {x} -> {y}" for a, x, y in ((same, getattr(rs[k], same), getattr(re_[k], same)),
                                                ("background", rs[k].background, re_[k].background)) if x != y]
    kept_other = other_kept(rs[1 - k], re_[1 - k])
    shift = centroid_shift(rs[k], re_[k])
    side = ("left", "right")
    cause = []
    if not source_ok:
        cause.append("the source does not show its prompt (read: " + " and ".join(f"{r.colour} {r.shape}" for r in rs) + f" on {rs[0].background})")
    if not reached:
        cause.append(f"the target {attr} of the {side[k]} object is not reached (read: {getattr(re_[k], attr)})")
    if changed:
        cause.append("untouched attributes changed (" + "; ".join(changed) + ")")
    if not shift <= MAX_SHIFT_PX:
        cause.append(f"the {side[k]} object moved" + (f" by {shift:.1f} px" if shift == shift else " (no object found)"))
    if not kept_other:
        o, e = rs[1 - k], re_[1 - k]
        cause.append(f"the {side[1 - k]} object, which the edit does not name, changed or moved "
                     f"({o.colour} {o.shape} -> {e.colour} {e.shape}, {centroid_shift(o, e):.1f} px)")
    return {"measured": True, "source_ok": source_ok, "reached": bool(reached), "untouched_kept": not changed and kept_other,
            "centroid_shift_px": shift, "mask_iou": attributes.iou(rs[k].mask, re_[k].mask),
            "success": bool(source_ok and reached and not changed and kept_other and shift <= MAX_SHIFT_PX), "cause": "; ".join(cause)}


def judge(reader: attributes.AttributeReader, etype: str, source_caption: dict, target_caption: dict,
          source_img, edited_img) -> dict:
    """The reader's verdict on one (source, edited) pair of an edit of type ``etype``: whether the
    source shows its prompt, the target attribute is reached, the untouched attributes are kept and
    the object stays in place (centroid shift <= :data:`MAX_SHIFT_PX`); ``cause`` names what failed."""
    attr = ATTRIBUTE_OF[etype]
    rs, re_ = reader.read(source_img), reader.read(edited_img)
    source_ok = all(getattr(rs, a) == source_caption[a] for a in ATTRS if source_caption[a])  # what the prompt names
    if attr == "size":
        reached = re_.size_word == "big"
    else:
        reached = getattr(re_, attr) == target_caption[attr]
    untouched = [a for a in ATTRS if a != attr]
    changed = [f"{a} {getattr(rs, a)} -> {getattr(re_, a)}" for a in untouched if getattr(rs, a) != getattr(re_, a)]
    shift = centroid_shift(rs, re_)
    in_place = shift <= MAX_SHIFT_PX
    cause = []
    if not source_ok:
        cause.append("the source does not show its prompt (read: " + ", ".join(str(getattr(rs, a)) for a in ATTRS) + ")")
    if not reached:
        got = re_.size_word or "neither small nor big" if attr == "size" else getattr(re_, attr)
        cause.append(f"the target {attr} is not reached (read: {got})")
    if changed:
        cause.append("untouched attributes changed (" + "; ".join(changed) + ")")
    if not in_place:
        cause.append("the object moved" + (f" by {shift:.1f} px" if shift == shift else " (no object found)"))
    return {"measured": True, "source_ok": source_ok, "reached": bool(reached), "untouched_kept": not changed,
            "centroid_shift_px": shift, "mask_iou": attributes.iou(rs.mask, re_.mask),
            "success": bool(source_ok and reached and not changed and in_place), "cause": "; ".join(cause)}


def t2i_showcase(edits: list[dict], images: dict[str, dict[str, str]], eval_summary: str, t2i_cfg: dict, seed: int,
                 out_csv: str, p2p_cfg: dict | None = None, reader_path: str | None = None) -> pd.DataFrame:
    """Rule t2i_showcase: the attribute reader's verdict on each showcased ``p2p.edits`` image
    (prompt-to-prompt and the no-control baseline), beside the evaluation's success rate of the
    same edit type, so that an example cannot stand for more than the evaluation supports.

    ``images``: edit name -> {source, edit, baseline} PNG paths (rule p2p_edit's outputs);
    ``p2p_cfg``: the p2p block (steps, guidance), to say where the edit's settings differ from the
    evaluation's (``settings_differ``).
    """
    from PIL import Image

    from diffusion_report.io import write_csv

    reader = fit_reader(t2i_cfg, seed, reader_path)
    summary = pd.read_csv(eval_summary)
    rates = {(r["edit"], r["method"]): r for r in summary.to_dict("records")}

    def load(path):
        return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64).transpose(2, 0, 1) / 127.5 - 1.0

    rows = []
    for edit in edits:
        etype, why = edit_type(reader.spec, edit)
        paths = images[edit["name"]]
        common = {"edit": edit["name"], "edit_type": etype or "",
                  "settings_differ": settings_differ(edit, p2p_cfg, t2i_cfg["eval"]) if p2p_cfg is not None and "eval" in t2i_cfg else ""}
        if etype is None:
            rows += [{**common, "method": method, "measured": False, "cause": why} for method in ("p2p", "baseline")]
            continue
        pair = etype in PAIR_EDIT_TYPES
        parse, verdict = (shapes.parse_pair_caption, judge_pair) if pair else (shapes.parse_caption, judge)
        captions = [parse(reader.spec, edit[k]) for k in ("source", "target")]
        source = load(paths["source"])
        rate_p, rate_b = rates.get((etype, "p2p")), rates.get((etype, "baseline"))
        rates_row = ({"eval_n": int(rate_p["n"]), "eval_success": float(rate_p["success"]),
                      "eval_success_baseline": float(rate_b["success"])} if rate_p is not None and rate_b is not None else {})
        for method, key in (("p2p", "edit"), ("baseline", "baseline")):
            rows.append({**common, "method": method, **verdict(reader, etype, *captions, source, load(paths[key])), **rates_row})
    df = pd.DataFrame(rows).reindex(columns=SHOWCASE_COLUMNS)
    write_csv(out_csv, df)
    log.info("showcase verdicts:\n%s", df.to_string())
    return df


# --------------------------------------------------------------------------- trade-off sweep
TRADEOFF_COLUMNS = ["edit", "method", "cross_replace_steps", "n", "success", "mask_iou", "centroid_shift_px", "all_kept"]


def tradeoff_points(pipe, reader, edit: str, cases: list[EditCase], seed: int, num_steps: int, guidance: float,
                    fractions: list[float], self_: float, self_max_tokens: int | None = None) -> pd.DataFrame:
    """One edit type's trade-off: per fraction of steps with injected cross-attention, the share of
    cases reaching the target and the layout kept (mean mask IoU and centroid shift between the
    source and the edited image), plus the no-control baseline (one point, drawn once).

    Every case keeps its x_T across fractions (the evaluation's ``t2i/eval/<edit>/<i>``), so the
    points differ only by the injection. With nothing injected (fraction 0 and ``self_`` 0) the
    controllers leave every attention call alone, so that point is the baseline's images, not
    sampled again (tested byte for byte against sampling it).
    """
    from diffusion_report.models.text2image import generate

    prompts, x_T = case_batch(pipe, cases, seed)
    plain, _ = generate(pipe, prompts, x_T, num_steps, guidance)

    def point(method, frac, images):
        scores = [score_pair(reader, c, images[2 * i], images[2 * i + 1]) for i, c in enumerate(cases)]
        return {"edit": edit, "method": method, "cross_replace_steps": frac, "n": len(cases),
                "success": float(np.mean([s["success"] for s in scores])),
                "mask_iou": float(np.nanmean([s["mask_iou"] for s in scores])),
                "centroid_shift_px": float(np.nanmean([s["centroid_shift_px"] for s in scores])),
                "all_kept": float(np.mean([s["all_kept"] for s in scores]))}

    rows = [point("baseline", float("nan"), plain)]
    for frac in fractions:
        if float(frac) == 0.0 and float(self_) == 0.0:  # no injection: the plain pair itself
            edited = plain
        else:
            edited, _ = generate(pipe, prompts, x_T, num_steps, guidance,
                                 case_controllers(pipe, cases, num_steps, float(frac), float(self_), self_max_tokens))
        rows.append(point("p2p", float(frac), edited))
    return pd.DataFrame(rows, columns=TRADEOFF_COLUMNS)


def tradeoff_labels(points: pd.DataFrame, tol_x: float = 0.15, tol_y: float = 0.06) -> list[tuple[float, float, str]]:
    """One label per cluster of the trade-off curve's points, so that labels never overlap.

    ``points``: one edit type's p2p rows (cross_replace_steps, mask_iou, success) in sweep order.
    A point joins the first cluster whose first point lies within ``tol_x`` (mask IoU: a label's
    width on the figure's unit axes) and ``tol_y`` (share of seeds) of it; clusters need not be
    consecutive in the sweep (0.6 can leave the cluster of 0.4 and 0.8).
    Returns (x, y, text) at each cluster's rightmost point (clear of the no-control star, which
    keeps less of the layout) and its mean share; the text lists the cluster's fractions, runs of
    consecutive swept fractions with an en dash ("0–0.4, 0.8–1")."""
    fractions = [float(f) for f in points["cross_replace_steps"]]
    xs, ys = [float(v) for v in points["mask_iou"]], [float(v) for v in points["success"]]
    clusters: list[list[int]] = []  # member indices; the first is the cluster's anchor
    for i in range(len(xs)):
        for members in clusters:
            if abs(xs[i] - xs[members[0]]) < tol_x and abs(ys[i] - ys[members[0]]) < tol_y:
                members.append(i)
                break
        else:
            clusters.append([i])
    out = []
    for members in clusters:
        runs: list[list[int]] = []
        for i in members:
            if runs and i == runs[-1][-1] + 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        text = ", ".join(f"{fractions[r[0]]:g}" if len(r) == 1 else f"{fractions[r[0]]:g}–{fractions[r[-1]]:g}" for r in runs)
        out.append((max(xs[i] for i in members), sum(ys[i] for i in members) / len(members), text))
    return out


def tradeoff_figure(path, df: pd.DataFrame) -> None:
    """Target reached (y) against layout kept (x) per edit type: the p2p curve over the swept
    fractions (labelled) and the baseline's single point."""
    import matplotlib

    from diffusion_report import figures  # noqa: F401 - the project's matplotlib style, the same in every process

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusion_report.io import save_figure

    edits = list(dict.fromkeys(df["edit"]))
    fig, axes = plt.subplots(1, len(edits), figsize=(3.3 * len(edits), 3.2), dpi=100, squeeze=False)
    for ax, edit in zip(axes[0], edits):
        d = df[df["edit"] == edit]
        p, b = d[d["method"] == "p2p"].sort_values("cross_replace_steps"), d[d["method"] == "baseline"]
        ax.plot(p["mask_iou"], p["success"], "o-", color="C0", label="prompt-to-prompt")
        for k, (x, y, text) in enumerate(tradeoff_labels(p)):
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 5 if k % 2 == 0 else -11), fontsize=8, color="C0")
        ax.plot(b["mask_iou"], b["success"], "*", ms=12, color="C3", label="no control")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(-0.03, 1.05)
        ax.set_xlabel("layout kept (mask IoU with the source)")
        ax.set_ylabel("target reached (share of seeds)")
        ax.set_title(edit.replace("_", " "), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)


def t2i_tradeoff(model_dir: str, t2i_cfg: dict, seed: int, outputs: dict, device: str = "cpu", reader_path: str | None = None) -> pd.DataFrame:
    """Rule t2i_tradeoff: the cross-attention sweep of ``t2i.tradeoff`` (CSV and figure)."""
    from diffusion_report.io import write_csv
    from diffusion_report.models.text2image import load_text2image

    tc, ec = t2i_cfg["tradeoff"], t2i_cfg["eval"]
    pipe = load_text2image(model_dir, config_key="t2i.weights", device=device, scheduler="ddim")
    reader = fit_reader(t2i_cfg, seed, reader_path)
    frames = []
    for edit in tc["edits"]:
        # the evaluation's cases (drawn as many as it draws, so case i is its case i), the first `seeds`
        n_eval = max(int(ec["seeds"]), int(tc["seeds"]))
        cases = edit_cases(reader.spec, edit, n_eval, seed, float(ec["reweight_scale"]))[: int(tc["seeds"])]
        frames.append(tradeoff_points(pipe, reader, edit, cases, seed, int(ec["num_steps"]), float(ec["guidance_scale"]),
                                      [float(f) for f in tc["cross_replace_steps"]], float(tc["self_replace_steps"]),
                                      ec.get("self_max_tokens")))
        log.info("%s: trade-off done", edit)
    df = pd.concat(frames, ignore_index=True)
    write_csv(outputs["csv"], df)
    tradeoff_figure(outputs["png"], df)
    log.info("trade-off:\n%s", df.to_string())
    return df


# --------------------------------------------------------------------------- reweighting sweep
REWEIGHT_COLUMNS = ["scale", "seed_index", "source", "source_area_px", "area_px", "area_change_px", "radius_change_px",
                    "read_big", "all_kept", "centroid_shift_px"]


def reweight_points(pipe, reader, cases: list[EditCase], seed: int, num_steps: int, guidance: float, scales: list[float],
                    cross: float, self_: float, self_max_tokens: int | None = None) -> tuple[pd.DataFrame, torch.Tensor]:
    """The prompt-to-prompt paper's attention re-weighting as a dose-response curve: every case
    (a prompt that says "big", its own x_T) edited with the attention on "big" multiplied by each
    scale, all (scale, case) pairs in one batch.

    Per (scale, case) the object's area in the edited image (pixels of the reader's mask) against
    the source's, the radius change, whether the reader reads it as "big", whether shape, colour and
    background are kept, and the centroid shift. Returns (rows, images (len(scales), len(cases),
    3, H, W) of the edited images, scale-major); the sources are ``images`` at scale 1 up to
    rounding (reweighting by 1 changes nothing).
    """
    from dataclasses import replace

    from diffusion_report.models.text2image import generate

    grid = [replace(c, reweight=dict(c.reweight, scale=float(s))) for s in scales for c in cases]
    prompts, x_T = case_batch(pipe, grid, seed)
    edited, _ = generate(pipe, prompts, x_T, num_steps, guidance, case_controllers(pipe, grid, num_steps, cross, self_, self_max_tokens))
    rows = []
    for i, case in enumerate(grid):
        src, out = edited[2 * i], edited[2 * i + 1]
        rs, re_ = reader.read(src), reader.read(out)
        score = score_reads(case, rs, re_, src, out)  # reweight_big: success is "read as big", every attribute untouched
        rows.append({
            "scale": case.reweight["scale"], "seed_index": case.index, "source": case.source,
            "source_area_px": int(rs.mask.sum()), "area_px": int(re_.mask.sum()),
            "area_change_px": int(re_.mask.sum()) - int(rs.mask.sum()), "radius_change_px": score["radius_change_px"],
            "read_big": score["success"], "all_kept": score["all_kept"], "centroid_shift_px": score["centroid_shift_px"],
        })
    images = edited[1::2].reshape(len(scales), len(cases), *edited.shape[1:])
    return pd.DataFrame(rows, columns=REWEIGHT_COLUMNS), images


def reweight_figure(path, df: pd.DataFrame) -> None:
    """The object's area change against the reweighting scale: one thin line per seed, the mean
    over seeds thick; beside it the share of seeds read as "big"."""
    import matplotlib

    from diffusion_report import figures  # noqa: F401 - the project's matplotlib style, the same in every process

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from diffusion_report.io import save_figure

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(6.6, 2.8), dpi=100)
    for _, d in df.groupby("seed_index"):
        d = d.sort_values("scale")
        ax.plot(d["scale"], d["area_change_px"], "-", color="0.75", lw=0.8)
    mean = df.groupby("scale")[["area_change_px", "read_big"]].mean().reset_index()
    ax.plot(mean["scale"], mean["area_change_px"], "o-", color="C0", lw=2, label="mean over seeds")
    ax.axhline(0, color="0.4", lw=0.6)
    ax.set_xlabel('scale on "big"')
    ax.set_ylabel("area change vs the source (px)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    bx.plot(mean["scale"], mean["read_big"], "o-", color="C1")
    bx.set_ylim(-0.03, 1.05)
    bx.set_xlabel('scale on "big"')
    bx.set_ylabel('read as "big" (share of seeds)')
    bx.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)


def t2i_reweight(model_dir: str, t2i_cfg: dict, seed: int, outputs: dict, device: str = "cpu", reader_path: str | None = None) -> pd.DataFrame:
    """Rule t2i_reweight: the reweighting sweep of ``t2i.reweight_sweep`` over the evaluation's
    ``reweight_big`` cases (their first ``seeds``), with t2i.eval's steps, guidance and injection:
    per-seed CSV, the curve, and an example grid (seeds x scales)."""
    from diffusion_report.io import write_csv
    from diffusion_report.models.text2image import load_text2image

    rc, ec = t2i_cfg["reweight_sweep"], t2i_cfg["eval"]
    pipe = load_text2image(model_dir, config_key="t2i.weights", device=device, scheduler="ddim")
    reader = fit_reader(t2i_cfg, seed, reader_path)
    n_eval = max(int(ec["seeds"]), int(rc["seeds"]))
    cases = edit_cases(reader.spec, "reweight_big", n_eval, seed, float(ec["reweight_scale"]))[: int(rc["seeds"])]
    scales = sorted(float(s) for s in rc["scales"])
    df, images = reweight_points(pipe, reader, cases, seed, int(ec["num_steps"]), float(ec["guidance_scale"]), scales,
                                 float(ec["cross_replace_steps"]), float(ec["self_replace_steps"]), ec.get("self_max_tokens"))
    write_csv(outputs["csv"], df)
    reweight_figure(outputs["png"], df)
    shown = range(min(int(rc.get("examples", 3)), len(cases)))
    image_grid_figure(outputs["examples"], [[images[k, i] for k in range(len(scales))] for i in shown],
                      [f"#{cases[i].index}: {cases[i].source}" for i in shown], [f"scale {s:g}" for s in scales], cell=0.9)
    log.info("reweighting sweep (means over seeds):\n%s", df.groupby("scale")[["area_change_px", "read_big", "all_kept"]].mean().to_string())
    return df
