"""Generic image distances: MSE, PSNR and SSIM between images in [-1, 1].

Images are tensors of shape (C, H, W) or batches (N, C, H, W), values in [-1, 1] (the models'
range). They are clipped to [-1, 1] and mapped to [0, 1] first, so PSNR and SSIM use data range 1
and mean what they usually mean for 8-bit pictures.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def to_unit(img: torch.Tensor) -> np.ndarray:
    """(…, C, H, W) tensor in [-1, 1] -> float64 array in [0, 1], channels last (…, H, W, C)."""
    x = img.detach().to("cpu", torch.float64).clamp(-1.0, 1.0)
    x = (x + 1.0) / 2.0
    return x.movedim(-3, -1).numpy()


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error in [0, 1] units between two images (C, H, W)."""
    return float(np.mean((to_unit(a) - to_unit(b)) ** 2))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB (data range 1); +inf for identical images."""
    m = mse(a, b)
    return math.inf if m == 0 else 10.0 * math.log10(1.0 / m)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Structural similarity (Wang et al. 2004) via skimage, Gaussian-free 7x7 window, data range 1.

    The window shrinks (to an odd size) for images smaller than 7 pixels.
    """
    from skimage.metrics import structural_similarity

    x, y = to_unit(a), to_unit(b)
    win = min(7, x.shape[0], x.shape[1])
    win = win if win % 2 == 1 else win - 1
    return float(structural_similarity(x, y, data_range=1.0, channel_axis=-1, win_size=win))


def pairwise(a: torch.Tensor, b: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-image MSE, PSNR and SSIM between batches a, b of shape (N, C, H, W). Arrays of shape (N,)."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(b.shape)}")
    return {
        "mse": np.array([mse(x, y) for x, y in zip(a, b)]),
        "psnr": np.array([psnr(x, y) for x, y in zip(a, b)]),
        "ssim": np.array([ssim(x, y) for x, y in zip(a, b)]),
    }


# --------------------------------------------------------------------------------------------
# Frechet distance between feature distributions (Heusel et al. 2017, eq. 6; Dowson & Landau 1982)
# --------------------------------------------------------------------------------------------
def samples_outside(x: torch.Tensor, bound: float) -> int:
    """How many samples of a batch (N, ...) have a pixel with |value| > ``bound``."""
    return int((x.flatten(1).abs().amax(1) > bound).sum())


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), covariance (D, D)) of features (N, D), float64, unbiased covariance (N - 1)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative eigenvalues from rounding -> 0)."""
    w, v = np.linalg.eigh((m + m.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2):

        d^2 = |mu1 - mu2|^2 + Tr(cov1 + cov2 - 2 (cov1^{1/2} cov2 cov1^{1/2})^{1/2})

    The trace term uses the symmetric form (the same trace as Tr((cov1 cov2)^{1/2}), FID's usual
    ``sqrtm``), so only eigen-decompositions of symmetric matrices are needed: no complex parts.
    """
    s1 = _psd_sqrt(np.asarray(cov1, dtype=np.float64))
    cross = _psd_sqrt(s1 @ np.asarray(cov2, dtype=np.float64) @ s1)
    diff = np.asarray(mu1, dtype=np.float64) - np.asarray(mu2, dtype=np.float64)
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(cross))


def feature_frechet(features: np.ndarray, reference: np.ndarray) -> float:
    """Frechet distance between the Gaussian fits of two feature sets (N, D) and (M, D)."""
    return frechet_distance(*gaussian_stats(features), *gaussian_stats(reference))


def bootstrap_frechet(features: np.ndarray, reference: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Frechet distances of bootstrap resamples of ``features`` (N, D): one per row of ``indices``
    (B, N) ints in 0..N-1, drawn with replacement. Returns shape (B,).

    Passing the same ``indices`` for several sample sets drawn from one x_T (common random
    numbers) gives a paired bootstrap: the spread of the difference of two cells is then the
    spread of their per-resample differences. The reference set stays fixed.
    """
    mu_r, cov_r = gaussian_stats(reference)
    f = np.asarray(features, dtype=np.float64)
    return np.array([frechet_distance(*gaussian_stats(f[idx]), mu_r, cov_r) for idx in np.asarray(indices)])
