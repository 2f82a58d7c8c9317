"""Forward-diffusion stage (exercise 3): one function per rule.

* ``forward_clean`` :func:`forward_clean`: the configured images, cropped and resized, as a tensor;
* ``forward_grid``  :func:`forward_grid`: the images noised at the shown timesteps;
* ``forward_mse``   :func:`forward_mse`: MSE per timestep beside its closed-form expectation;
* ``forward_plots`` :func:`forward_plots`.
"""

from __future__ import annotations

import pandas as pd
import torch

from diffusion_report.core.forward import mse_table, noisy_images
from diffusion_report.core.schedules import Schedule


def forward_clean(sources: list[str], size: int, out_tensor: str, out_png: str, files: list[str] | None = None) -> None:
    """Load the clean images into one safetensors file (x0, N x 3 x size x size) and a PNG strip.

    ``sources`` are the config entries (they name the images); ``files`` the files they resolve
    to (the rule's inputs), read instead when given."""
    from safetensors.torch import save_file

    from diffusion_report import figures  # noqa: F401 - the project's matplotlib style, the same in every process
    from diffusion_report.images import image_name, load_images
    from diffusion_report.io import atomic_path, save_figure

    x0 = load_images(list(files) if files else sources, size)
    names = [image_name(s) for s in sources]
    with atomic_path(out_tensor) as tmp:
        save_file({"x0": x0}, str(tmp), metadata={"names": ",".join(names)})
    fig = figures.image_grid([list(x0)], col_labels=names)
    save_figure(out_png, fig)
    figures.close(fig)


def load_clean(path: str) -> tuple[torch.Tensor, list[str]]:
    """Inverse of :func:`forward_clean`: (x0, names)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        names = fh.metadata()["names"].split(",")
        return fh.get_tensor("x0"), names


def forward_grid(x0_path: str, show_timesteps: list[int], schedule: Schedule, seed: int, out_png: str) -> None:
    """Rows: images; columns: x_t at each shown timestep (t = 0 is the clean image)."""
    from diffusion_report import figures  # noqa: F401 - the project's matplotlib style, the same in every process
    from diffusion_report.io import save_figure

    x0, names = load_clean(x0_path)
    xt = noisy_images(x0, show_timesteps, schedule, seed)  # (K, N, C, H, W)
    rows = [[xt[k, n] for k in range(len(show_timesteps))] for n in range(x0.shape[0])]
    fig = figures.image_grid(rows, row_labels=names, col_labels=[f"t = {t}" for t in show_timesteps])
    save_figure(out_png, fig)
    figures.close(fig)


def forward_mse(x0_path: str, t_max: int, schedule: Schedule, seed: int, out_csv: str) -> None:
    from diffusion_report.io import write_csv

    x0, names = load_clean(x0_path)
    write_csv(out_csv, mse_table(x0, names, t_max, schedule, seed))


def image_columns(df: pd.DataFrame) -> list[str]:
    """The per-image measured columns of an MSE table."""
    return [c for c in df.columns if c not in ("t", "mean") and not c.startswith("expected_")]


def forward_plots(mse_csv: str, show_timesteps: list[int], out_shown: str, out_curve: str) -> None:
    """MSE at the shown timesteps, and the full curve per image with the closed-form expectation."""
    from diffusion_report import figures  # noqa: F401 - the project's matplotlib style, the same in every process
    from diffusion_report.io import save_figure

    df = pd.read_csv(mse_csv)
    names = image_columns(df)
    shown = df[df["t"].isin(show_timesteps)]
    fig = figures.line_plot(shown["t"].to_numpy(), {n: shown[n].to_numpy() for n in names} | {"mean": shown["mean"].to_numpy()},
                            "timestep $t$", "MSE$(x_t, x_0)$", "MSE at the shown timesteps", connect=False, logx=True,
                            xticks=sorted(set(int(t) for t in shown["t"])))
    save_figure(out_shown, fig)
    figures.close(fig)
    fig = figures.line_plot(df["t"].to_numpy(), {n: df[n].to_numpy() for n in names}, "timestep $t$", "MSE$(x_t, x_0)$",
                            "Measured MSE (solid) and closed-form expectation (dashed)",
                            dashed={f"E[{n}]": df[f"expected_{n}"].to_numpy() for n in names})
    save_figure(out_curve, fig)
    figures.close(fig)
