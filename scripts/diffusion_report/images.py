"""Clean input images: scikit-image's shipped samples or user paths, normalised to [-1, 1]."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_PIXELS = 100_000_000  # refuse decompression bombs (larger than 10k x 10k)
# The config check decodes images up to this size in full (a 4000 x 4000 RGB JPEG: ~0.2 s, 48 MB),
# so that truncated or corrupt pixel data is a config error; larger ones get header checks only
# (decoding them at every snakemake start would cost seconds), and a decode failure in the job is
# still a one-line error naming the image.
CHECK_DECODE_MAX_PIXELS = 16_000_000


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


# How each PIL mode is mapped to RGB. Anything not listed is refused with its mode named.
EIGHT_BIT_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa"})  # composited on white
INT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})  # rescaled by the integer type's range
FLOAT_MODES = frozenset({"F"})  # rescaled from [0, 1] or [0, 255], whichever the values fit
SUPPORTED_MODES = EIGHT_BIT_MODES | ALPHA_MODES | INT_MODES | FLOAT_MODES
FLOAT_SLACK = 1e-3  # float values this far outside [0, 1] or [0, 255] still count as inside (rounding)

log = logging.getLogger(__name__)


def _tiff_sample_type(im: Image.Image) -> tuple[int, bool] | None:
    """(bits per sample, signed) stated by a TIFF's tags, or None for other formats."""
    tags = getattr(im, "tag_v2", None)
    if tags is None or 258 not in tags:
        return None
    bits = tags[258]
    bits = int(bits[0] if isinstance(bits, tuple) else bits)
    fmt = tags.get(339, 1)
    fmt = int(fmt[0] if isinstance(fmt, tuple) else fmt)
    return bits, fmt == 2


def pixel_range(im: Image.Image, label: str, tiff: tuple[int, bool] | None = None) -> tuple[float, float, str]:
    """(lo, hi, reason): the value range that maps to black..white for a single-channel image
    whose values are not 8-bit (modes I;16*, I, F, and signed 8-bit TIFFs).

    The rules, in order:

    * ``I;16``, ``I;16L``, ``I;16B``, ``I;16N``: unsigned 16-bit, [0, 65535].
    * ``I`` (32-bit container): the integer type a TIFF's BitsPerSample/SampleFormat tags state
      when it is 16 bits or fewer (e.g. signed 16-bit is [-32768, 32767]); otherwise, when every
      value lies in [0, 65535], unsigned 16-bit [0, 65535] (16-bit data in a 32-bit container, as
      from an int32 array or a 16-bit PGM); otherwise unsigned 32-bit [0, 2^32 - 1] when a TIFF
      says unsigned (PIL hands such values over as signed; they are reinterpreted), else signed
      32-bit [-2^31, 2^31 - 1].
    * ``F`` (float): [0, 1] when every value lies in [0, 1], else [0, 255] when every value lies in
      [0, 255] (each with a slack of ``FLOAT_SLACK`` for rounding); any other range, NaN or
      infinity is a ValueError naming ``label`` and the mode.
    * ``L`` from a TIFF whose SampleFormat says signed: signed 8-bit, [-128, 127].

    ``tiff`` is :func:`_tiff_sample_type` of the opened file (read before any transpose, which
    drops the tags). The decision is logged at INFO level, so a rule's log says how each input was read.
    """
    arr = _raw_array(im, tiff)
    mode = im.mode
    vmin, vmax = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if mode in FLOAT_MODES:
        if not np.isfinite(arr).all():
            raise ValueError(f"{label} is a float image (PIL mode {mode!r}) with NaN or infinite values")
        if vmin >= -FLOAT_SLACK and vmax <= 1 + FLOAT_SLACK:
            lo, hi, why = 0.0, 1.0, "float values within [0, 1]"
        elif vmin >= -FLOAT_SLACK and vmax <= 255 + FLOAT_SLACK:
            lo, hi, why = 0.0, 255.0, "float values within [0, 255]"
        else:
            raise ValueError(
                f"{label} is a float image (PIL mode {mode!r}) with values in [{vmin:g}, {vmax:g}]; "
                "only [0, 1] and [0, 255] are understood (rescale it and save it again)"
            )
    elif mode == "L":
        lo, hi, why = -128.0, 127.0, "signed 8-bit TIFF"
    elif mode != "I":
        lo, hi, why = 0.0, 65535.0, f"unsigned 16-bit (mode {mode})"
    elif tiff is not None and tiff[0] <= 16:
        bits, signed = tiff
        lo, hi = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if signed else (0.0, 2.0**bits - 1)
        why = f"{'signed' if signed else 'unsigned'} {bits}-bit TIFF"
    elif vmin >= 0 and vmax <= 65535:
        lo, hi, why = 0.0, 65535.0, "32-bit integers all within [0, 65535], read as unsigned 16-bit"
    elif tiff == (32, False):
        lo, hi, why = 0.0, 2.0**32 - 1, "unsigned 32-bit TIFF"
    else:
        lo, hi, why = -(2.0**31), 2.0**31 - 1, "signed 32-bit integers"
    log.info("%s: PIL mode %s, values %g..%g, read as %s: [%g, %g] -> black..white", label, mode, vmin, vmax, why, lo, hi)
    return lo, hi, why


def _raw_array(im: Image.Image, tiff: tuple[int, bool] | None) -> np.ndarray:
    """The pixel values as the file means them: PIL hands signed 8-bit TIFFs over as unsigned
    bytes and unsigned 32-bit TIFFs as signed integers; both are reinterpreted here."""
    arr = np.asarray(im)
    if im.mode == "L" and tiff == (8, True):
        arr = arr.view(np.int8)
    elif im.mode == "I" and tiff == (32, False):
        arr = arr.view(np.uint32)
    return arr


def _needs_range(mode: str, tiff: tuple[int, bool] | None) -> bool:
    """True for images whose values are not 8-bit (see :func:`pixel_range`)."""
    return mode in INT_MODES or mode in FLOAT_MODES or (mode == "L" and tiff == (8, True))


def _first_frame(im: Image.Image, label: str) -> tuple[Image.Image, tuple[int, bool] | None]:
    """The first frame of an animated GIF/PNG or the first page of a multi-page TIFF, loaded and
    turned upright by its EXIF orientation tag; and the TIFF sample type (see :func:`pixel_range`)."""
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        im.seek(0)
        log.info("%s: %d frames/pages; using the first", label, frames)
    im.load()
    tiff = _tiff_sample_type(im)
    return ImageOps.exif_transpose(im), tiff


def _unsupported(label: str, mode: str) -> str:
    return (
        f"{label} has PIL mode {mode!r}, which cannot be mapped to RGB "
        f"(supported: {', '.join(sorted(SUPPORTED_MODES))})"
    )


@contextlib.contextmanager
def _strict_decoding():
    """Cut-off pixel data is an error while this runs, whatever the process set: importing
    WeasyPrint sets PIL's global ``ImageFile.LOAD_TRUNCATED_IMAGES = True``, which would let a
    truncated file load with grey where its data ends."""
    from PIL import ImageFile

    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = before


def check_image(source: str, base_dir: str | os.PathLike = ".") -> str | None:
    """Why ``source`` cannot be used as an input image, or None when it can.

    Reads only the header, except for images whose value range must be detected from the pixels
    (16/32-bit integer and float modes, see :func:`pixel_range`), which are decoded.
    """
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
                mode = im.mode
                tiff = _tiff_sample_type(im)
                im.verify()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return f"{source!r} is too large to decode safely (more than {MAX_PIXELS} pixels)"
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        return f"{source!r} is not a readable image ({type(exc).__name__}: {exc})"
    if w * h > MAX_PIXELS:
        return f"{source!r} has {w}x{h} pixels, more than the {MAX_PIXELS} allowed"
    if min(w, h) < 1:
        return f"{source!r} has no pixels"
    if mode not in SUPPORTED_MODES:
        return _unsupported(repr(source), mode)
    if _needs_range(mode, tiff) or w * h <= CHECK_DECODE_MAX_PIXELS:
        try:
            with warnings.catch_warnings(), _strict_decoding():
                warnings.simplefilter("ignore")  # PIL's warnings about odd metadata; the pixels decide
                with Image.open(path) as im:
                    frame, tiff = _first_frame(im, repr(source))  # decodes the pixels
                    if frame.mode not in SUPPORTED_MODES:
                        return _unsupported(repr(source), frame.mode)
                    if _needs_range(frame.mode, tiff):
                        pixel_range(frame, repr(source), tiff)
        except ValueError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - truncated data and the like
            return f"{source!r} is not a readable image ({type(exc).__name__}: {exc})"
    return None


# Peak bytes per input pixel while one image is decoded, converted and resized (load_image), over
# the process's baseline. Measured on 4000x4000 files with forward.forward_clean (max RSS minus that
# of a 200x200 image, 580 MB): 1/L/P 9.1, RGB/CMYK 14.8, I;16 18.6, P with transparency 19.6,
# RGBA/LA/I/F 22.4; the table adds ~20% to each.
DECODE_BYTES_PER_PIXEL = {"1": 12, "L": 12, "P": 12, "RGB": 18, "RGBX": 18, "CMYK": 18, "YCbCr": 18, "LAB": 18, "HSV": 18}
DECODE_BYTES_OTHER = 26  # alpha, palette transparency, 16/32-bit integer, float


def decode_mem_mb(sources: list[str], base_dir: str | os.PathLike = ".") -> int:
    """MB that decoding the largest of ``sources`` adds to a process (images are loaded one at a
    time), from the file headers alone (nothing is decoded). Entries that cannot be opened count 0
    (the config check reports them). For a rule's ``resources: mem_mb``."""
    peak = 0
    for source in sources:
        try:
            with Image.open(resolve_image(source, base_dir)) as im:
                w, h = im.size
                per_px = DECODE_BYTES_PER_PIXEL.get(im.mode, DECODE_BYTES_OTHER)
                if im.mode == "P" and "transparency" in im.info:
                    per_px = DECODE_BYTES_OTHER
        except Exception:  # noqa: BLE001 - missing or broken files: the config check names them
            continue
        peak = max(peak, w * h * per_px)
    return -(-peak // 1_000_000)


def to_rgb_array(im: Image.Image, size: int, label: str) -> np.ndarray:
    """An opened image -> centre-cropped, resized (size, size, 3) float32 array in [-1, 1].

    8-bit modes go through PIL's own conversion (palette, CMYK, YCbCr, LAB, HSV, 1-bit: 0/255);
    alpha and palette transparency are composited on white; 16/32-bit integer and
    float images are rescaled by :func:`pixel_range` and resized as floats, then repeated to RGB.
    A mode outside ``SUPPORTED_MODES`` is a ValueError naming ``label`` and the mode.
    """
    im, tiff = _first_frame(im, label)
    if im.mode not in SUPPORTED_MODES:
        raise ValueError(_unsupported(label, im.mode))
    if _needs_range(im.mode, tiff):
        lo, hi, _ = pixel_range(im, label, tiff)
        unit = (_raw_array(im, tiff).astype(np.float64) - lo) / (hi - lo)
        im = Image.fromarray(unit.astype(np.float32), "F")
        im = _crop_resize(im, size)
        arr = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0) * 2.0 - 1.0
        return np.repeat(arr[..., None], 3, axis=2)
    if im.mode in ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):  # not RGB/L key colours: as before
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba)
    im = _crop_resize(im.convert("RGB"), size)
    return np.asarray(im, dtype=np.float32) / 127.5 - 1.0


def _crop_resize(im: Image.Image, size: int) -> Image.Image:
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


def load_image(source: str, size: int, base_dir: str | os.PathLike = ".", key: str = "forward.images"):
    """Read, convert to RGB, centre-crop to a square, resize to ``size``; returns (3, size, size) in [-1, 1].

    Every value maps by the real range of its pixel type (see :func:`to_rgb_array` and
    :func:`pixel_range`): 8-bit 0..255, 16-bit 0..65535, float [0, 1] or [0, 255] (detected and
    logged). EXIF orientation is applied; animated images and multi-page TIFFs give their first
    frame. An unusable file or a mode that cannot be mapped is a ValueError naming the image
    (and the config ``key`` it came from).
    """
    problem = check_image(source, base_dir)
    if problem:
        raise ValueError(f"{key}: {problem}")
    try:
        with _strict_decoding(), Image.open(resolve_image(source, base_dir)) as im:
            arr = to_rgb_array(im, size, repr(source))
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - corrupt pixel data of an image too large for the config check to decode
        raise ValueError(f"{key}: {source!r} is not a readable image ({type(exc).__name__}: {exc})") from exc
    import torch

    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def load_images(sources: list[str], size: int, base_dir: str | os.PathLike = "."):
    """Stack of clean images x_0, shape (N, 3, size, size), values in [-1, 1]."""
    import torch

    return torch.stack([load_image(s, size, base_dir) for s in sources])
