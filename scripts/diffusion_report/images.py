"""Clean input images: scikit-image's shipped samples or user paths, normalised to [-1, 1]."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_PIXELS = 100_000_000  # refuse decompression bombs (larger than 10k x 10k)


def skimage_data_dir() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def shipped_names() -> list[str]:
    """Stems of the sample images shipped inside scikit-image (no download needed)."""
    return sorted(p.stem for p in skimage_data_dir().iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def resolve_image(source: str, base_dir: str | os.PathLike = ".") -> Path:
    """A config entry (a scikit-image sample name or a path) -> the image file to read."""
    path = Path(base_dir, source).expanduser() if not Path(source).is_absolute() else Path(source)
    if path.exists() or any(ch in source for ch in "/\\."):
        return path
    for suffix in IMAGE_SUFFIXES:
        candidate = skimage_data_dir() / f"{source}{suffix}"
        if candidate.exists():
            return candidate
    return path


def image_name(source: str) -> str:
    """A short, file-name-safe label for an image entry (used in CSV columns and file names)."""
    stem = Path(source).stem if any(ch in source for ch in "/\\.") else source
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in stem)
    return safe[:40] or "image"


def check_image(source: str, base_dir: str | os.PathLike = ".") -> str | None:
    """Why ``source`` cannot be used as an input image, or None when it can. Reads only the header."""
    path = resolve_image(source, base_dir)
    if not path.exists():
        return f"{source!r} is neither an existing file nor a scikit-image sample ({', '.join(shipped_names()[:8])}, ...)"
    if path.is_dir():
        return f"{source!r} is a directory, not an image file"
    if path.stat().st_size == 0:
        return f"{source!r} is an empty file (0 bytes)"
    if not os.access(path, os.R_OK):
        return f"{source!r} is not readable (check its permissions)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                im.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return f"{source!r} is too large to decode safely (more than {MAX_PIXELS} pixels)"
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        return f"{source!r} is not a readable image ({type(exc).__name__}: {exc})"
    if w * h > MAX_PIXELS:
        return f"{source!r} has {w}x{h} pixels, more than the {MAX_PIXELS} allowed"
    if min(w, h) < 1:
        return f"{source!r} has no pixels"
    return None


def load_image(source: str, size: int, base_dir: str | os.PathLike = "."):
    """Read, convert to RGB, centre-crop to a square, resize to ``size``; returns (3, size, size) in [-1, 1].

    Grayscale, palette and RGBA inputs become RGB (alpha composited on white).
    """
    problem = check_image(source, base_dir)
    if problem:
        raise ValueError(f"forward.images: {problem}")
    with Image.open(resolve_image(source, base_dir)) as im:
        im.load()
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, rgba)
        im = im.convert("RGB")
        w, h = im.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    import torch

    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_images(sources: list[str], size: int, base_dir: str | os.PathLike = "."):
    """Stack of clean images x_0, shape (N, 3, size, size), values in [-1, 1]."""
    import torch

    return torch.stack([load_image(s, size, base_dir) for s in sources])
