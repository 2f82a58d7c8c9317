"""Matplotlib figures shared by the stages (headless, deterministic bytes via io.save_figure)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffusion_report.io import to_uint8  # noqa: E402

plt.rcParams.update({"svg.hashsalt": "diffusion-report", "figure.dpi": 100, "font.size": 9})

# The report prints a figure at most PRINT_WIDTH_IN wide and PRINT_HEIGHT_IN high (report/style.css:
# the A4 text column, 482 pt, and 19 cm); a figure drawn within them prints at its own size or larger
# (a PNG pixel is 0.75 pt, i.e. 96 dpi), so its text keeps its point size. Figures are sized to fit
# PAGE_WIDTH_IN x PAGE_HEIGHT_IN (a little inside), and their smallest text is MIN_FONT_PT, above the
# 7 pt the print check asks (report.pagecheck).
PRINT_WIDTH_IN = 482 / 72
PRINT_HEIGHT_IN = 19 / 2.54
PAGE_WIDTH_IN = 6.6
PAGE_HEIGHT_IN = 7.3
MIN_FONT_PT = 7.5


def fit_cell(cell: float, rows: int, cols: int, extra_w: float, extra_h: float) -> float:
    """The largest cell size (inches) up to ``cell`` for which ``cols`` cells plus ``extra_w`` and
    ``rows`` cells plus ``extra_h`` fit the printed page."""
    return min(cell, (PAGE_WIDTH_IN - extra_w) / max(cols, 1), (PAGE_HEIGHT_IN - extra_h) / max(rows, 1))


def image_grid(
    images: list[list[torch.Tensor | np.ndarray]],
    row_labels: list[str] | None = None,
    col_labels: list[str] | None = None,
    cell_inches: float = 1.3,
    title: str | None = None,
):
    """A rows x cols grid of images (tensors in [-1, 1] (C, H, W) or uint8 arrays), with labels."""
    rows, cols = len(images), max(len(r) for r in images)
    cell_inches = fit_cell(cell_inches, rows, cols, 0.6, 0.4)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell_inches + 0.6, rows * cell_inches + 0.4), squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images[r]):
                img = images[r][c]
                arr = img if isinstance(img, np.ndarray) and img.dtype == np.uint8 else to_uint8(img)
                ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, interpolation="nearest", vmin=0, vmax=255)
            if col_labels and r == 0 and c < len(col_labels):
                ax.set_title(col_labels[c], fontsize=9)
            if row_labels and c == 0 and r < len(row_labels):
                ax.set_ylabel(row_labels[r], fontsize=9, rotation=90)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def line_plot(x, series: dict[str, np.ndarray], xlabel: str, ylabel: str, title: str | None = None,
              dashed: dict[str, np.ndarray] | None = None, logx: bool = False, markers: bool = False,
              connect: bool = True, xticks=None):
    """Lines (and optional dashed reference lines, same colours by order, drawn on top so that they
    stay visible where they agree with the measured lines) on one axis. ``connect=False`` draws
    markers only: values at a few chosen x, where a line would suggest values in between."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, y) in enumerate(series.items()):
        ax.plot(x, y, label=label, color=colours[i % len(colours)], marker="o" if markers or not connect else None,
                ls="-" if connect else "none", lw=1.0 if dashed else 1.4, alpha=0.55 if dashed else 1.0)
    for i, (label, y) in enumerate((dashed or {}).items()):
        ax.plot(x, y, label=label, color=colours[i % len(colours)] if len(dashed) > 1 else "k", ls=(0, (4, 2)), lw=1.6, zorder=3)
    if xticks is not None:
        ax.set_xticks(list(xticks))
    if logx:
        ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=MIN_FONT_PT, ncol=2)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)
