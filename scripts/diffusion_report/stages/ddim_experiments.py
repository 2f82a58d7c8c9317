"""The DDIM paper's experiments (Song, Meng & Ermon 2021) on the DDIM stage's model.

* **Quality vs steps and eta** (Table 1): DDIM with eta in ``ddim.quality.etas`` and the larger
  DDPM variance sigma-hat, crossed with S in ``ddim.quality.step_counts``, all from the stage's one
  x_T. Each cell is scored by a Frechet distance on the digit reader's penultimate features
  against held-out real digits ("FID on classifier features": the same formula as FID, another
  feature space, so the numbers are not comparable to the paper's, only their ordering is), with
  a paired bootstrap error: every cell starts from the same x_T and takes its noise from the same
  Brownian path (:func:`diffusion_report.stages.ddim.noise_path`: common random numbers), so
  resampling the sample indices jointly gives the error of each cell and of each difference
  between cells, and those differences carry far less sampling noise than independent cells would.
* **Reconstruction** (Table 2): held-out real digits encoded to x_T with the DDIM ODE run forward
  (:func:`diffusion_report.core.samplers.ddim_invert`) and decoded with DDIM (eta = 0) at the same S; per-pixel MSE on the
  [0, 1] scale.
* **Interpolation** (Figure 6): spherical interpolation between pairs of x_T, decoded with DDIM.

Samples of a cell that another rule already made are reused, not drawn again
(:func:`~diffusion_report.stages.ddim_cells.reused_cells`): ``ddim_sample``'s (eta equal to
``ddim.eta``, S in ``ddim.step_counts``) and ``ddim_ddpm_baseline``'s (eta = 1 at S = T).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from diffusion_report.core.samplers import (
    ddim_invert,
    ddim_sample,
    sample_variants,
    slerp,
)
from diffusion_report.io import (
    derive_seed,
    load_tensor,
    load_tensors,
    make_generator,
    save_tensors,
    tensor_sha256,
)
from diffusion_report.models.ddpm import image_shape
from diffusion_report.stages.ddim_cells import (
    PAPER_FID,
    PAPER_RECON_MSE,
    PAPER_RECON_STEPS,
    PAPER_STEPS,
    PIXEL_BOUND,
    RECON_FAIL_MSE,
)

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ rules
def ddim_quality_samples(model: str, x_T_path: str, out_path: str, *, steps: int, variants: list[str],
                        sampling: dict, seed: int, device: str = "auto") -> None:
    """Rule ``ddim_quality_samples``: the Table 1 variants at one S from the stage's x_T.

    ``sampling``: skip_type, clip_sample (as for the stage's samplers). Every variant's noise comes
    from the stage's one Brownian path (:func:`diffusion_report.stages.ddim.noise_path`), the same
    at every S and for every variant: the cells differ by their sampler, not by their draws.
    """
    from diffusion_report.models.ddpm import load_model
    from diffusion_report.models.loading import autocast, resolve_device, resolve_precision
    from diffusion_report.stages.ddim import noise_path

    dev = resolve_device(device)
    precision = resolve_precision(sampling.get("precision", "float32"), dev)
    unet, schedule, prediction_type = load_model(model, dev)
    x_T, _ = load_tensor(x_T_path)
    # all variants stacked into one UNet batch: the same bytes as one variant after another, and on
    # 2 CPU cores 1.13-1.18x faster in bfloat16, even (0.99-1.03x) in float32 (bench/bench_ddim_quality.py)
    path = noise_path(seed, schedule.T, x_T.shape)  # one path, its draws shared by the variants (the same
    noise = {v: path for v in variants}              # bytes as one path each, 1/len(variants) of the draws)
    with autocast(dev, precision):
        out = sample_variants(unet, x_T.to(dev), schedule, int(steps), list(variants), noise=noise,
                              skip_type=sampling["skip_type"], clip_sample=bool(sampling["clip_sample"]),
                              prediction_type=prediction_type)
    save_tensors(out_path, out, {"steps": int(steps), "variants": list(variants), "precision": precision,
                                 "x_T_sha256": tensor_sha256(x_T)})


def _cells(quality_files: dict[int, str], reused_files: dict[int, list[tuple[str, str]]]) -> dict[tuple[str, int], torch.Tensor]:
    cells: dict[tuple[str, int], torch.Tensor] = {}
    for steps, path in quality_files.items():
        tensors, _ = load_tensors(path)
        for v, x in tensors.items():
            cells[(v, int(steps))] = x
    for steps, reused in reused_files.items():
        for variant, path in reused:
            cells[(variant, int(steps))] = load_tensor(path)[0]
    return cells


def ddim_quality(quality_files: dict[int, str], reused_files: dict[int, list[tuple[str, str]]], *, out_csv: str,
                      pairs_csv: str, out_png: str, variants: list[str], image_size: int, seed: int,
                      n_boot: int) -> None:
    """Rule ``ddim_quality``: Frechet distance, recognisability and pixel range per cell, with
    paired-bootstrap errors, and a plot. ``pairs_csv`` holds the differences, each with its paired
    error: one variant between neighbouring step counts, and every two variants at one S (column
    ``neighbours``: the two are next to each other in the table).

    ``quality_files``: {S: file of :func:`ddim_quality_samples`}; ``reused_files``: {S: [(variant,
    samples file of rule ddim_sample or ddim_ddpm_baseline)]} (``ddim_cells.reused_cells``).
    """
    import pandas as pd

    from diffusion_report import metrics
    from diffusion_report.io import save_figure, write_csv
    from diffusion_report.models import digits

    cells = _cells(quality_files, reused_files)
    steps_all = sorted({s for _, s in cells})
    clf = digits.train_classifier(image_size, seed)
    split = digits.digits_split(image_size, seed)
    ref = clf.features(split["test"][0])
    n = next(iter(cells.values())).shape[0]
    rng = np.random.default_rng(derive_seed(seed, "ddim_quality_bootstrap"))
    idx = rng.integers(0, n, size=(int(n_boot), n))
    boot, fd, rows = {}, {}, []
    for v in variants:
        for s in steps_all:
            x = cells[(v, s)]
            f = clf.features(x)
            boot[(v, s)] = metrics.bootstrap_frechet(f, ref, idx)
            fd[(v, s)] = metrics.feature_frechet(f, ref)
            rows.append({"variant": v, "steps": s, "num_samples": int(x.shape[0]),
                         "fd": fd[(v, s)], "fd_boot_std": float(boot[(v, s)].std(ddof=1)),
                         **clf.recognisability(x), "max_abs_pixel": float(x.abs().max()),
                         "outside_bound": metrics.samples_outside(x, PIXEL_BOUND)})
    # the floor: real digits the DDPM never saw (clf split, same size as a cell) against the test split
    real = split["clf"][0][: n]
    f_real = clf.features(real)
    rows.append({"variant": "real digits", "steps": 0, "num_samples": int(real.shape[0]),
                 "fd": metrics.feature_frechet(f_real, ref),
                 "fd_boot_std": float(metrics.bootstrap_frechet(f_real, ref, idx % real.shape[0]).std(ddof=1)),
                 **clf.recognisability(real), "max_abs_pixel": float(real.abs().max()),
                 "outside_bound": metrics.samples_outside(real, PIXEL_BOUND)})
    df = pd.DataFrame(rows)
    paper = {v: dict(zip(PAPER_STEPS, vals)) for v, vals in PAPER_FID.items()}
    df["paper_cifar10_fid"] = [paper.get(r["variant"], {}).get(int(r["steps"]), float("nan")) for _, r in df.iterrows()]
    write_csv(out_csv, df)

    def change(a, b, label, s0, s1, neighbours):  # cell a -> cell b, with the paired-bootstrap error of the difference
        return {"variant": label, "steps_from": s0, "steps_to": s1, "fd_change": fd[b] - fd[a],
                "change_boot_std": float((boot[b] - boot[a]).std(ddof=1)), "neighbours": bool(neighbours)}

    pairs = [change((v, s0), (v, s1), v, s0, s1, True) for v in variants for s0, s1 in zip(steps_all, steps_all[1:])]
    pairs += [change((v0, s), (v1, s), f"{v0} -> {v1}", s, s, j == i + 1)  # every two variants at one S (the
              for s in steps_all                                           # report's orderings need them all)
              for i, v0 in enumerate(variants) for j, v1 in enumerate(variants) if j > i]
    write_csv(pairs_csv, pd.DataFrame(pairs))
    save_figure(out_png, quality_figure(df, variants))


def quality_figure(df, variants: list[str]):
    import matplotlib

    from diffusion_report import figures  # noqa: F401 - the project's matplotlib style, the same in every process

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(6.6, 3.2), dpi=150)
    for i, v in enumerate(variants):
        sub = df[df.variant == v].sort_values("steps")
        name = v.replace("sigma_hat", r"$\hat\sigma$").replace("eta=", r"$\eta$ = ")
        axes[0].errorbar(sub["steps"], sub["fd"], yerr=sub["fd_boot_std"], marker="o", ms=3, capsize=2, label=name, color=f"C{i}")
        pv = PAPER_FID.get(v)
        if pv:
            axes[1].plot(PAPER_STEPS, pv, marker="o", ms=3, label=name, color=f"C{i}")
    real = df[df.variant == "real digits"]
    if len(real):
        axes[0].axhline(float(real["fd"].iloc[0]), color="k", ls=":", lw=1, label="real digits")
    axes[0].set_title("this run: Frechet distance on\nthe digit reader's features", fontsize=8)
    axes[1].set_title("DDIM paper, CIFAR-10 FID (Table 1)", fontsize=8)
    steps = sorted(int(s) for s in df.loc[df.variant != "real digits", "steps"].unique())
    for ax, ticks in zip(axes, (steps, PAPER_STEPS)):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(list(ticks), [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("sampling steps S", fontsize=8)
        ax.tick_params(labelsize=7.5)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7.5, frameon=False)
    fig.tight_layout()
    return fig


def reconstruction_images(image_size: int, channels: int, n: int, seed: int, forward_images=None) -> torch.Tensor:
    """The images to encode: held-out real digits (the ``test`` split) for the 1-channel digits
    model, else the forward stage's images at the model's size; shape (n', C, H, W) in [-1, 1]."""
    if channels == 1:
        from diffusion_report.models import digits

        return digits.digits_split(image_size, seed)["test"][0][: int(n)]
    from diffusion_report.images import load_image

    return torch.stack([load_image(src, image_size) for src in (forward_images or [])[: int(n)]])


def ddim_reconstruction(model: str, out_csv: str, out_png: str, *, step_counts, num_images: int, sampling: dict,
                       seed: int, device: str = "auto", forward_images=None) -> None:
    """Rule ``ddim_reconstruction``: encode with :func:`ddim_invert`, decode with DDIM, per S."""
    import pandas as pd

    from diffusion_report import metrics
    from diffusion_report.figures import image_grid
    from diffusion_report.io import save_figure, write_csv
    from diffusion_report.models.ddpm import load_model
    from diffusion_report.models.loading import autocast, resolve_device, resolve_precision

    dev = resolve_device(device)
    precision = resolve_precision(sampling.get("precision", "float32"), dev)
    unet, schedule, prediction_type = load_model(model, dev)
    channels, size, _ = image_shape(unet)
    x0 = reconstruction_images(size, channels, num_images, seed, forward_images)
    kw = {"skip_type": sampling["skip_type"], "prediction_type": prediction_type}
    rows, recs = [], []
    for S in sorted(int(s) for s in step_counts):
        with autocast(dev, precision):
            x_T = ddim_invert(unet, x0.to(dev), schedule, S, **kw)
            rec = ddim_sample(unet, x_T, schedule, S, clip_sample=False, **kw).to("cpu")
        d = metrics.pairwise(rec, x0)
        rows.append({"steps": S, "num_images": int(x0.shape[0]), "mse": float(d["mse"].mean()),
                     "mse_median": float(np.median(d["mse"])), "mse_max": float(d["mse"].max()),
                     "failed": int((d["mse"] > RECON_FAIL_MSE).sum()), "psnr": float(np.mean(d["psnr"])),
                     "x_T_std": float(x_T.std()), "precision": precision,
                     "paper_cifar10_mse": dict(zip(PAPER_RECON_STEPS, PAPER_RECON_MSE)).get(S, float("nan"))})
        recs.append((S, rec))
        log.info("reconstruction at %d steps: MSE %.2e", S, rows[-1]["mse"])
    write_csv(out_csv, pd.DataFrame(rows))
    k = min(8, x0.shape[0])
    grid = [[x0[i] for i in range(k)]] + [[r[i] for i in range(k)] for _, r in recs]
    fig = image_grid(grid, row_labels=["input"] + [f"S = {s}" for s, _ in recs], cell_inches=0.55)
    save_figure(out_png, fig)


def ddim_interpolation(model: str, out_png: str, *, pairs: int, points: int, steps: int, sampling: dict, seed: int,
                      device: str = "auto") -> None:
    """Rule ``ddim_interpolation``: slerp between ``pairs`` pairs of x_T, decoded with DDIM (eta = 0)."""
    from diffusion_report.figures import image_grid
    from diffusion_report.io import save_figure
    from diffusion_report.models.ddpm import load_model
    from diffusion_report.models.loading import autocast, resolve_device, resolve_precision

    dev = resolve_device(device)
    precision = resolve_precision(sampling.get("precision", "float32"), dev)
    unet, schedule, prediction_type = load_model(model, dev)
    gen = make_generator(seed, "ddim_interpolation")
    ends = torch.randn((int(pairs), 2, *image_shape(unet)), generator=gen)
    alphas = np.linspace(0.0, 1.0, int(points))
    z = torch.stack([slerp(p[0], p[1], float(a)) for p in ends for a in alphas])
    with autocast(dev, precision):
        x = ddim_sample(unet, z.to(dev), schedule, int(steps), skip_type=sampling["skip_type"],
                        clip_sample=bool(sampling["clip_sample"]), prediction_type=prediction_type).to("cpu")
    grid = [[x[i * len(alphas) + j] for j in range(len(alphas))] for i in range(int(pairs))]
    fig = image_grid(grid, col_labels=[f"{a:.2g}" for a in alphas], cell_inches=0.55)
    fig.supxlabel("interpolation weight alpha (slerp between two x_T)", fontsize=8)
    fig.tight_layout()
    save_figure(out_png, fig)
