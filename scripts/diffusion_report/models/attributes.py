"""Attribute reader: recover shape, colour, background, mask, centre and size from an image.

Used to score generated images against their captions and prompt-to-prompt edits against their
targets. Background and colour come from pixel statistics (nearest palette colour to the median of
the border / of the foreground); the foreground mask is every pixel far from the background colour
(largest connected component); the shape comes from a small classifier (logistic regression on
the mask cropped to its bounding box) trained on the generator's own images with pixel noise, so
its accuracy on held-out generated images can be stated and tested. A two-object image is read
half by half (:meth:`AttributeReader.read_pair`): the generator puts one object in each half.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from diffusion_report.io import make_generator
from diffusion_report.models import shapes

CROP = 8  # the classifier sees the mask's bounding box resized to CROP x CROP


@dataclass
class Reading:
    """What the reader sees in one image."""

    shape: str
    colour: str
    background: str
    mask: np.ndarray  # (H, W) bool
    cx: float  # centroid x (pixels, centres at i + 0.5); nan if the mask is empty
    cy: float
    radius: float  # half the longest side of the mask's bounding box
    size_word: str  # "small", "big" or "" by the generator's thresholds
    background_rgb: np.ndarray  # (3,) median border colour in [-1, 1]


def _palette(names_to_hex: dict[str, str]) -> tuple[list[str], np.ndarray]:
    return list(names_to_hex), np.array([shapes.hex_to_rgb(v) for v in names_to_hex.values()])


def _nearest(rgb: np.ndarray, names: list[str], table: np.ndarray) -> str:
    return names[int(np.argmin(((table - rgb[None]) ** 2).sum(axis=1)))]


def foreground_threshold(spec: shapes.ShapeSpec) -> float:
    """Half the smallest RGB distance between any shape colour and any background colour."""
    _, fg = _palette(spec.colours)
    _, bg = _palette(spec.backgrounds)
    d = np.sqrt(((fg[:, None] - bg[None]) ** 2).sum(-1))
    return float(d.min() / 2)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a bool mask (H, W); empty stays empty."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask.copy()
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    return labels == (1 + int(np.argmax(sizes)))


def mask_features(mask: np.ndarray) -> np.ndarray:
    """Shape features of a bool mask (H, W): bbox crop resized to CROP x CROP, fill ratio, aspect. (CROP*CROP+2,)"""
    if not mask.any():
        return np.zeros(CROP * CROP + 2)
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)
    h, w = crop.shape
    small = F.interpolate(torch.from_numpy(crop)[None, None], size=(CROP, CROP), mode="bilinear", align_corners=False)[0, 0]
    return np.concatenate([small.numpy().ravel(), [crop.mean(), h / (h + w)]])


def segment(img: np.ndarray, spec: shapes.ShapeSpec) -> tuple[np.ndarray, np.ndarray]:
    """img (3, H, W) in [-1, 1] -> (foreground mask (H, W) bool, median border colour (3,)).

    Pixels farther than :func:`foreground_threshold` from the border colour seed the foreground;
    its median colour then splits the image: a pixel is foreground when it is closer to that
    colour than to the background's (coverage > 1/2 on anti-aliased edges), largest component kept.
    """
    border = np.concatenate([img[:, 0, :], img[:, -1, :], img[:, 1:-1, 0], img[:, 1:-1, -1]], axis=1)
    bg = np.median(border, axis=1)
    d_bg = np.sqrt(((img - bg[:, None, None]) ** 2).sum(axis=0))
    seed = largest_component(d_bg > foreground_threshold(spec))
    if not seed.any():
        return seed, bg
    fg = np.median(img[:, seed], axis=1)
    d_fg = np.sqrt(((img - fg[:, None, None]) ** 2).sum(axis=0))
    return largest_component((d_fg < d_bg) & (d_bg > 0.5 * foreground_threshold(spec))), bg


class AttributeReader:
    """Reads attributes of images drawn in ``spec``'s vocabulary; call :meth:`fit` first."""

    def __init__(self, spec: shapes.ShapeSpec):
        self.spec = spec
        self.colour_names, self.colour_table = _palette(spec.colours)
        self.bg_names, self.bg_table = _palette(spec.backgrounds)
        self.classifier = None

    def fit(self, n: int, seed: int, noise: float = 0.1) -> "AttributeReader":
        """Train the shape classifier on ``n`` generated images with Gaussian pixel noise ``noise``."""
        from sklearn.linear_model import LogisticRegression

        images, labels = noisy_samples(self.spec, n, seed, "t2i/reader/train", noise)
        X = [mask_features(segment(im, self.spec)[0]) for im in images]
        if self.spec.two_objects > 0:  # the smaller objects of pairs too, each seen in its half
            pairs, pair_labels = noisy_pairs(self.spec, n // 2, seed, "t2i/reader/train/pairs", noise)
            X += [mask_features(segment(half, self.spec)[0]) for im in pairs for half in halves(im)]
            labels = list(labels) + [s for obj in pair_labels for s in obj]
        X = np.stack(X)
        self.classifier = LogisticRegression(max_iter=2000, C=10.0).fit(X, labels)
        return self

    def state(self) -> dict:
        """The fitted shape classifier as plain data (JSON-safe: lists of floats, which JSON keeps
        exactly), for :meth:`from_state`: a later job reads with it instead of fitting again."""
        if self.classifier is None:
            raise RuntimeError("AttributeReader.fit must be called before state")
        c = self.classifier
        return {"classes": [str(x) for x in c.classes_], "coef": c.coef_.tolist(), "intercept": c.intercept_.tolist(), "crop": CROP}

    @classmethod
    def from_state(cls, spec: shapes.ShapeSpec, state: dict) -> "AttributeReader":
        """A reader whose classifier is ``state`` (from :meth:`state`): it reads exactly as the fitted one."""
        from sklearn.linear_model import LogisticRegression

        if int(state.get("crop", -1)) != CROP:
            raise ValueError(f"the saved attribute reader was fitted on {state.get('crop')}x{state.get('crop')} crops, this code uses {CROP}x{CROP}")
        reader = cls(spec)
        clf = LogisticRegression()
        clf.classes_ = np.array(state["classes"])
        clf.coef_ = np.array(state["coef"], dtype=np.float64)
        clf.intercept_ = np.array(state["intercept"], dtype=np.float64)
        reader.classifier = clf
        return reader

    def read(self, img: torch.Tensor | np.ndarray) -> Reading:
        """img (3, H, W) in [-1, 1] -> :class:`Reading`."""
        if self.classifier is None:
            raise RuntimeError("AttributeReader.fit must be called before read")
        img = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        img = img.astype(np.float64)
        mask, bg = segment(img, self.spec)
        background = _nearest(bg, self.bg_names, self.bg_table)
        if not mask.any():
            return Reading("none", "none", background, mask, float("nan"), float("nan"), 0.0, "", bg)
        colour = _nearest(np.median(img[:, mask], axis=1), self.colour_names, self.colour_table)
        shape = str(self.classifier.predict(mask_features(mask)[None])[0])
        ys, xs = np.nonzero(mask)
        radius = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / 2
        return Reading(shape, colour, background, mask, float(xs.mean() + 0.5), float(ys.mean() + 0.5), float(radius),
                       self.spec.size_word(radius), bg)


    def read_pair(self, img: torch.Tensor | np.ndarray) -> tuple[Reading, Reading]:
        """img (3, H, W) of two objects -> (left object's :class:`Reading`, right object's): each
        half read as its own image (centres in the whole image's pixels), the background from the
        whole image's border."""
        img = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        img = img.astype(np.float64)
        _, bg = segment(img, self.spec)
        background = _nearest(bg, self.bg_names, self.bg_table)
        out = []
        for k, half in enumerate(halves(img)):
            r = self.read(half)
            dx = k * (img.shape[-1] - half.shape[-1])
            mask = np.zeros(img.shape[1:], dtype=bool)
            mask[:, dx: dx + half.shape[-1]] = r.mask
            out.append(Reading(r.shape, r.colour, background, mask, r.cx + dx, r.cy, r.radius, r.size_word, bg))
        return out[0], out[1]


def halves(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The left and right halves (3, H, W // 2) of an image (3, H, W), where a pair's objects lie."""
    w = img.shape[-1] // 2
    return img[..., :w], img[..., img.shape[-1] - w:]


def noisy_pairs(spec: shapes.ShapeSpec, n: int, seed: int, name: str, noise: float) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """``n`` two-object images (n, 3, H, W) with N(0, noise^2) pixel noise, and their shapes (left, right)."""
    g = make_generator(seed, name)
    b = shapes.sample_pairs(spec, n, g)
    images = b.images + noise * torch.randn(b.images.shape, generator=g)
    return images.clamp(-1, 1).numpy().astype(np.float64), [(o[0][1], o[1][1]) for o in b.objects]


def noisy_samples(spec: shapes.ShapeSpec, n: int, seed: int, name: str, noise: float) -> tuple[np.ndarray, list[str]]:
    """``n`` generated images (n, 3, H, W) with N(0, noise^2) pixel noise, and their shapes."""
    g = make_generator(seed, name)
    b = shapes.sample(spec, n, g)
    images = b.images + noise * torch.randn(b.images.shape, generator=g)
    return images.clamp(-1, 1).numpy().astype(np.float64), b.shape


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def reader_accuracy(reader: AttributeReader, n: int, seed: int, noise_levels=(0.0, 0.1, 0.2)) -> pd.DataFrame:
    """Accuracy of the reader on held-out generated images, one row per pixel-noise level.

    Columns: objects (1; 2 for the rows of two-object images when the generator draws them, each
    object read in its half by :meth:`AttributeReader.read_pair`), noise, n (objects read),
    shape_acc, colour_acc, background_acc, mask_iou (mean), centre_err_px (mean distance of the
    read centroid from the ground-truth mask's centroid), radius_err_px.
    """
    rows = []
    for noise in noise_levels:
        g = make_generator(seed, f"t2i/reader/test/{noise}")
        b = shapes.sample(reader.spec, n, g)
        images = (b.images + noise * torch.randn(b.images.shape, generator=g)).clamp(-1, 1)
        reads = [(reader.read(images[i]), (b.shape[i], b.colour[i], b.background[i]), b.masks[i].numpy(), float(b.radius[i]))
                 for i in range(n)]
        rows.append(_accuracy_row(1, noise, reads))
    if reader.spec.two_objects > 0:
        for noise in noise_levels:
            g = make_generator(seed, f"t2i/reader/test/pairs/{noise}")
            b = shapes.sample_pairs(reader.spec, n, g)
            images = (b.images + noise * torch.randn(b.images.shape, generator=g)).clamp(-1, 1)
            reads = [(r, (b.objects[i][k][1], b.objects[i][k][0], b.background[i]), b.masks[i, k].numpy(), float(b.radius[i, k]))
                     for i in range(n) for k, r in enumerate(reader.read_pair(images[i]))]
            rows.append(_accuracy_row(2, noise, reads))
    return pd.DataFrame(rows)


def _accuracy_row(objects: int, noise: float, reads: list[tuple[Reading, tuple[str, str, str], np.ndarray, float]]) -> dict:
    """One row of :func:`reader_accuracy` from (reading, (shape, colour, background), true mask, true radius) per object."""
    cerr = []
    for r, _, gt, _ in reads:
        ys, xs = np.nonzero(gt)
        cerr.append(float(np.hypot(r.cx - (xs.mean() + 0.5), r.cy - (ys.mean() + 0.5))) if r.mask.any() else np.nan)
    m = len(reads)
    return {"objects": objects, "noise": noise, "n": m,
            **{f"{a}_acc": sum(getattr(r, a) == t[j] for r, t, _, _ in reads) / m for j, a in enumerate(("shape", "colour", "background"))},
            "mask_iou": float(np.mean([iou(r.mask, gt) for r, _, gt, _ in reads])), "centre_err_px": float(np.nanmean(cerr)),
            "radius_err_px": float(np.mean([abs(r.radius - rad) for r, _, _, rad in reads]))}
