"""Artifact I/O: atomic writes, deterministic PNG/CSV, seeded generators, rule-script logging.

No script writes under its final output name until the artifact is complete: everything goes
through :func:`atomic_path`, which writes to a temporary sibling and renames it into place.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is imported by the functions that need it: the report layer never loads it
    import torch

log = logging.getLogger("diffusion_report")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path`` (atomic on POSIX).

    On error the temporary file is removed and ``path`` is left untouched. Works for files and
    for folders (e.g. ``save_pretrained`` targets).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # temporaries left by an earlier attempt that was killed (SIGKILL skips the cleanup below)
    for stale in final.parent.glob(f".{glob.escape(final.name)}.*.part{glob.escape(final.suffix)}"):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part" + final.suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # callers create it (as a file or a folder)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written for {final}")
        if tmp.is_file():
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        if final.is_dir() and tmp.is_dir():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_csv(path: str | os.PathLike, df, float_format: str = "%.8g") -> None:
    """Write a pandas DataFrame as CSV with a fixed float format (same bytes on every run)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, float_format=float_format, lineterminator="\n")


def _is_tensor(x) -> bool:
    """Whether ``x`` is a torch.Tensor, without importing torch (the report layer never loads it)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def to_uint8(img: torch.Tensor | np.ndarray) -> np.ndarray:
    """An image in [-1, 1], shape (C, H, W) tensor or (H, W, C) array, to (H, W, C) uint8."""
    if _is_tensor(img):
        img = img.detach().to("cpu", dtype=sys.modules["torch"].float32)
        if img.ndim == 3 and img.shape[0] in (1, 3, 4):
            img = img.permute(1, 2, 0)
        img = img.numpy()
    arr = np.clip((np.asarray(img, dtype=np.float64) + 1.0) * 127.5, 0, 255)
    arr = np.rint(arr).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return arr


def save_png(path: str | os.PathLike, img: np.ndarray | torch.Tensor | Image.Image) -> None:
    """Save an image as PNG with no metadata (identical bytes for identical pixels).

    Tensors/float arrays are taken to be in [-1, 1]; uint8 arrays and PIL images as they are.
    """
    if _is_tensor(img) or (isinstance(img, np.ndarray) and img.dtype != np.uint8):
        img = to_uint8(img)
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG", optimize=False, compress_level=6)


def min_font_pt(fig) -> float | None:
    """The smallest font size (pt, at the figure's own size) of the text a matplotlib figure draws:
    titles, labels, legends, annotations, and the tick labels of visible axes. None: no text."""
    from matplotlib.text import Text

    fig.canvas.draw()  # tick labels get their text when drawn
    axis_texts, drawn = set(), []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            axis_texts.update(id(t) for t in axis.findobj(Text))
            if ax.axison and axis.get_visible():
                drawn += [axis.label, *axis.get_majorticklabels(), *axis.get_minorticklabels()]
    drawn += [t for t in fig.findobj(Text) if id(t) not in axis_texts]
    sizes = [t.get_fontsize() for t in drawn if t.get_visible() and t.get_text().strip()
             and (t.axes is None or t.axes.get_visible())]
    return min(sizes) if sizes else None


def save_figure(path: str | os.PathLike, fig) -> None:
    """Save a matplotlib figure with metadata stripped, so reruns give the same bytes.

    A PNG records its smallest font (``min-font-pt``, "none" without text) and its dpi
    (``figure-dpi``), from which the report's print check (:mod:`diffusion_report.report.pagecheck`)
    computes the printed text size.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    metadata = {"Software": None} if fmt == "png" else {"Creator": None, "Date": None}
    if fmt == "png":
        small = min_font_pt(fig)
        metadata.update({"min-font-pt": "none" if small is None else f"{small:g}", "figure-dpi": f"{fig.dpi:g}"})
    if fmt == "svg":
        metadata = {"Date": None, "Creator": None}
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, metadata=metadata, bbox_inches="tight", dpi=fig.dpi)


def derive_seed(seed: int, name: str | int) -> int:
    """A 63-bit seed for one artifact, from the master seed and the artifact's name or index."""
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def make_generator(seed: int, name: str | int, device: str | torch.device = "cpu") -> torch.Generator:
    """An explicit torch.Generator for one artifact (never the global RNG)."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, name))
    return gen


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_table(folder: str | os.PathLike, files) -> dict[str, str]:
    """{relative path: sha256} of ``files`` (paths relative to ``folder``)."""
    return {rel: sha256_file(Path(folder) / rel) for rel in files}


def verify_sha256sums(folder: str | os.PathLike, files, key: str, fix: str) -> None:
    """Check ``folder/SHA256SUMS`` (``sha256sum`` format) against ``files``; on a missing list or a
    mismatch raise naming the config ``key``, the files and ``fix`` (what the user can do)."""
    folder = Path(folder)
    sums = folder / "SHA256SUMS"
    if not sums.exists():
        raise FileNotFoundError(f"{key}: {folder} has no SHA256SUMS; {fix}")
    expected = dict(line.split("  ", 1)[::-1] for line in sums.read_text().splitlines() if line.strip())
    missing = [rel for rel in files if not (folder / rel).is_file()]
    if missing:
        raise FileNotFoundError(f"{key}: {folder} lacks {', '.join(missing)}; {fix}")
    actual = sha256_table(folder, files)
    bad = [rel for rel in files if expected.get(rel) != actual[rel]]
    if bad:
        raise ValueError(f"{key}: checksum mismatch in {folder} for {', '.join(bad)}; restore the files or {fix}")


def run_rule(snakemake, main: Callable[..., None]) -> None:
    """Run a rule script: log to ``snakemake.log[0]``, use the rule's threads, log any error.

    ``main(snakemake)`` does the work. Exceptions are logged with their message (what a user can
    act on) and re-raised so that Snakemake marks the job failed.
    """
    log_path = snakemake.log[0] if len(snakemake.log) else None
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)
    for noisy in ("fontTools", "matplotlib", "PIL", "weasyprint.progress"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    torch = sys.modules.get("torch")  # a rule that runs no model never imports it
    if torch is not None:
        torch.set_num_threads(max(1, int(getattr(snakemake, "threads", 1) or 1)))
    try:
        main(snakemake)
    except Exception as exc:  # noqa: BLE001 - logged, then re-raised
        reason = _storage_problem(exc)
        if reason:
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            log.error("cannot write the results%s: %s. Free disk space or make the results folder writable, "
                      "then rerun: nothing was written under a final name.", where, reason)
        else:
            log.error("%s: %s", type(exc).__name__, exc)
        raise


_STORAGE_ERRNOS = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded",
                   errno.EACCES: "Permission denied", errno.EROFS: "Read-only file system", errno.EPERM: "Operation not permitted"}


def _storage_problem(exc: BaseException) -> str | None:
    """A full, read-only or forbidden disk behind ``exc`` (also when a library wraps the OSError)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
            return _STORAGE_ERRNOS[exc.errno]
        for reason in _STORAGE_ERRNOS.values():
            if reason in str(exc) or (reason == "No space left on device" and "os error 28" in str(exc)):
                return reason
        exc = exc.__cause__ or exc.__context__
    return None


# ------------------------------------------------------------------ tensors (safetensors files)
def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Save named tensors (float32, CPU) as safetensors with JSON metadata, atomically.

    The metadata goes into a single header entry (``meta``, keys sorted): safetensors writes a
    metadata map in hash order, so several entries would give different bytes on each run.
    """
    import torch
    from safetensors.torch import save_file

    meta = {"meta": json.dumps(metadata or {}, sort_keys=True)}
    data = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in sorted(tensors.items())}
    with atomic_path(path) as tmp:
        save_file(data, str(tmp), metadata=meta)


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """({name: tensor}, metadata) saved by :func:`save_tensors`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}, json.loads((fh.metadata() or {}).get("meta", "{}"))


def save_tensor(path: str | Path, tensor: torch.Tensor, metadata: dict | None = None) -> None:
    """Save one tensor (key ``x``) with :func:`save_tensors`."""
    save_tensors(path, {"x": tensor}, metadata)


def load_tensor(path: str | Path) -> tuple[torch.Tensor, dict]:
    """(tensor, metadata) saved by :func:`save_tensor`."""
    tensors, meta = load_tensors(path)
    return tensors["x"], meta


def tensor_sha256(x: torch.Tensor) -> str:
    """SHA-256 of a tensor's float32 bytes: identifies the x_T a sample was drawn from."""
    import torch

    return hashlib.sha256(x.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()).hexdigest()


def safetensors_numel(path: str | Path) -> int:
    """The number of values stored in a safetensors file, read from its header (no tensor is loaded)."""
    import math

    from safetensors import safe_open

    with safe_open(str(path), framework="np") as fh:
        return sum(math.prod(fh.get_slice(k).get_shape()) for k in fh.keys())
