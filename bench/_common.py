"""Helpers for the benchmark scripts: interleaved timing, peak memory, CSV output, machine description."""

from __future__ import annotations

import csv
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def _sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn) -> float:
    """Wall time of one call of ``fn`` (CUDA work included)."""
    _sync()
    t0 = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t0


def side_by_side(variants: dict, repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each ``variants[name]()``, measured interleaved.

    Every repeat runs each variant once in turn, so a drift in machine load (another process, a
    thermal change) hits all variants alike and the ratios stay meaningful.
    """
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeats):
        for k, fn in variants.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def median_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    return side_by_side({"fn": fn}, repeats, warmup)["fn"]


def rss_bytes() -> tuple[int, int]:
    """(current, peak) resident set size of this process in bytes, from /proc/self/status."""
    cur = peak = 0
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    return cur, peak


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process to its current RSS."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def peak_memory(fn) -> int:
    """Bytes of memory ``fn()`` needs at its peak above what is held before the call.

    On CUDA: ``torch.cuda.max_memory_allocated`` above the allocation before the call. On the CPU:
    the process's peak resident set size above its RSS before the call (needs Linux; run each
    variant in a fresh process so freed memory kept by the allocator is not reused).
    """
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    reset_peak_rss()
    before, _ = rss_bytes()
    fn()
    return rss_bytes()[1] - before


def machine() -> str:
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    return f"{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, {dev}"


def write_rows(name: str, rows: list[dict], out: str | os.PathLike | None = None) -> Path:
    """Write ``rows`` (dicts with the same keys) to ``out`` or ``bench/out/<name>.csv``, with the machine."""
    path = Path(out) if out else OUT / f"{name}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    m = machine()
    rows = [{**r, "machine": m} for r in rows]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
