"""The DDIM paper's experiments (Song, Meng & Ermon 2021) on the DDIM stage's model.

* **Quality vs steps and eta** (Table 1): DDIM with eta in ``ddim.quality.etas`` and the larger
  DDPM variance sigma-hat, crossed with S in ``ddim.quality.step_counts``, all from the stage's one
  x_T. Each cell is scored by a Frechet distance on the digit reader's penultimate features
  against held-out real digits ("FID on classifier features": the same formula as FID, another
  feature space, so the numbers are not comparable to the paper's, only their ordering is), with
  a paired bootstrap error: every cell starts from the same x_T, so resampling the sample indices
  jointly gives the error of each cell and of each difference between neighbouring cells.
* **Reconstruction** (Table 2): held-out real digits encoded to x_T with the DDIM ODE run forward
  (:func:`ddim.ddim_invert`) and decoded with DDIM (eta = 0) at the same S; per-pixel MSE on the
  [0, 1] scale.
* **Interpolation** (Figure 6): spherical interpolation between pairs of x_T, decoded with DDIM.

Samples of a cell that the stage's ``ddim_sample`` rule already made (eta equal to ``ddim.eta``,
S in ``ddim.step_counts``) are reused, not drawn again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from .ddim import ddim_invert, ddim_sample, image_shape, load_tensor, load_tensors, sample_variants, save_tensors, slerp, tensor_sha256
from .ddim_cells import quality_variants, reused_variant, variant_label  # noqa: F401 (re-exported)
from .io import derive_seed, make_generator

log = logging.getLogger(__name__)

# The paper's CIFAR-10 FIDs (Table 1, S = 10, 20, 50, 100, 1000) and reconstruction MSEs (Table 2).
PAPER_STEPS = (10, 20, 50, 100, 1000)
PAPER_FID = {
    "eta=0": (13.36, 6.84, 4.67, 4.16, 4.04),
    "eta=0.2": (14.04, 7.11, 4.77, 4.25, 4.09),
    "eta=0.5": (16.66, 8.35, 5.25, 4.46, 4.29),
    "eta=1": (41.07, 18.36, 8.01, 5.78, 4.73),
    "sigma_hat": (367.43, 133.37, 32.72, 9.99, 3.17),
}
PAPER_RECON_STEPS = (10, 20, 50, 100, 200, 500, 1000)
PAPER_RECON_MSE = (0.014, 0.0065, 0.0023, 0.0009, 0.0004, 0.0001, 0.0001)

# Thresholds of the report's claims, stated next to the functions that use them.
CONFIDENT_GOAL = 0.9  # the goal: >= 90% of DDIM samples confidently classified at S >= 20
RECOG_GAP = 0.03  # DDIM recognisability within this of the 1000-step DDPM's
PIXEL_BOUND = 1.2  # no sample pixel outside [-1.2, 1.2] before display clamping
RECON_FAIL_MSE = 0.01  # a round trip with a per-pixel MSE above this (PSNR < 20 dB) counts as failed


# ------------------------------------------------------------------------------------ rules
def run_quality_samples(model: str, x_T_path: str, out_path: str, *, steps: int, variants: list[str],
                        sampling: dict, seed: int, device: str = "auto") -> None:
    """Rule ``ddim_quality_samples``: the Table 1 variants at one S from the stage's x_T.

    ``sampling``: skip_type, clip_sample (as for the stage's samplers). Each variant's noise comes
    from its own generator ``ddim_quality_<variant>_<S>``.
    """
    from .ddim import load_model
    from .models import resolve_device

    dev = resolve_device(device)
    unet, schedule, prediction_type = load_model(model, dev)
    x_T, _ = load_tensor(x_T_path)
    # one variant after another: stacking them into one UNet batch (sample_variants with all of them)
    # gives the same bytes but was measured 1.1-1.3x slower on 2 CPU cores (bench/bench_ddim_quality.py)
    out = {}
    for v in variants:
        gen = make_generator(seed, f"ddim_quality_{v}_{int(steps)}")
        out.update(sample_variants(unet, x_T.to(dev), schedule, int(steps), [v], generators={v: gen},
                                   skip_type=sampling["skip_type"], clip_sample=bool(sampling["clip_sample"]),
                                   prediction_type=prediction_type))
    save_tensors(out_path, out, {"steps": int(steps), "variants": list(variants), "x_T_sha256": tensor_sha256(x_T)})


def _cells(quality_files: dict[int, str], reused_files: dict[int, tuple[str, str]]) -> dict[tuple[str, int], torch.Tensor]:
    cells: dict[tuple[str, int], torch.Tensor] = {}
    for steps, path in quality_files.items():
        tensors, _ = load_tensors(path)
        for v, x in tensors.items():
            cells[(v, int(steps))] = x
    for steps, (variant, path) in reused_files.items():
        cells[(variant, int(steps))] = load_tensor(path)[0]
    return cells


def run_quality_table(quality_files: dict[int, str], reused_files: dict[int, tuple[str, str]], *, out_csv: str,
                      pairs_csv: str, out_png: str, variants: list[str], image_size: int, seed: int,
                      n_boot: int) -> None:
    """Rule ``ddim_quality``: Frechet distance, recognisability and pixel range per cell, with
    paired-bootstrap errors, the differences between neighbouring step counts, and a plot.

    ``quality_files``: {S: file of :func:`run_quality_samples`}; ``reused_files``: {S: (variant,
    samples file of rule ddim_sample)}.
    """
    import pandas as pd

    from . import digits, metrics
    from .io import save_figure, write_csv

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
                         **clf.recognisability(x), "max_abs_pixel": float(x.abs().max())})
    # the floor: real digits the DDPM never saw (clf split, same size as a cell) against the test split
    real = split["clf"][0][: n]
    f_real = clf.features(real)
    rows.append({"variant": "real digits", "steps": 0, "num_samples": int(real.shape[0]),
                 "fd": metrics.feature_frechet(f_real, ref),
                 "fd_boot_std": float(metrics.bootstrap_frechet(f_real, ref, idx % real.shape[0]).std(ddof=1)),
                 **clf.recognisability(real), "max_abs_pixel": float(real.abs().max())})
    df = pd.DataFrame(rows)
    paper = {v: dict(zip(PAPER_STEPS, vals)) for v, vals in PAPER_FID.items()}
    df["paper_cifar10_fid"] = [paper.get(r["variant"], {}).get(int(r["steps"]), float("nan")) for _, r in df.iterrows()]
    write_csv(out_csv, df)

    def change(a, b, label, s0, s1):  # cell a -> cell b, with the paired-bootstrap error of the difference
        return {"variant": label, "steps_from": s0, "steps_to": s1, "fd_change": fd[b] - fd[a],
                "change_boot_std": float((boot[b] - boot[a]).std(ddof=1))}

    pairs = [change((v, s0), (v, s1), v, s0, s1) for v in variants for s0, s1 in zip(steps_all, steps_all[1:])]
    pairs += [change((v0, s), (v1, s), f"{v0} -> {v1}", s, s)  # neighbouring variants at one S
              for s in steps_all for v0, v1 in zip(variants, variants[1:])]
    write_csv(pairs_csv, pd.DataFrame(pairs))
    save_figure(out_png, quality_figure(df, variants))


def quality_figure(df, variants: list[str]):
    from . import figures  # noqa: F401 - the project's matplotlib style, the same in every process
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.0), dpi=150)
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
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=6.5, frameon=False)
    fig.tight_layout()
    return fig


def reconstruction_images(image_size: int, channels: int, n: int, seed: int, forward_images=None) -> torch.Tensor:
    """The images to encode: held-out real digits (the ``test`` split) for the 1-channel digits
    model, else the forward stage's images at the model's size; shape (n', C, H, W) in [-1, 1]."""
    if channels == 1:
        from . import digits

        return digits.digits_split(image_size, seed)["test"][0][: int(n)]
    from .images import load_image

    return torch.stack([load_image(src, image_size) for src in (forward_images or [])[: int(n)]])


def run_reconstruction(model: str, out_csv: str, out_png: str, *, step_counts, num_images: int, sampling: dict,
                       seed: int, device: str = "auto", forward_images=None) -> None:
    """Rule ``ddim_reconstruction``: encode with :func:`ddim_invert`, decode with DDIM, per S."""
    import pandas as pd

    from . import metrics
    from .ddim import load_model
    from .figures import image_grid
    from .io import save_figure, write_csv
    from .models import resolve_device

    dev = resolve_device(device)
    unet, schedule, prediction_type = load_model(model, dev)
    channels, size, _ = image_shape(unet)
    x0 = reconstruction_images(size, channels, num_images, seed, forward_images)
    kw = {"skip_type": sampling["skip_type"], "prediction_type": prediction_type}
    rows, recs = [], []
    for S in sorted(int(s) for s in step_counts):
        x_T = ddim_invert(unet, x0.to(dev), schedule, S, **kw)
        rec = ddim_sample(unet, x_T, schedule, S, clip_sample=False, **kw).to("cpu")
        d = metrics.pairwise(rec, x0)
        rows.append({"steps": S, "num_images": int(x0.shape[0]), "mse": float(d["mse"].mean()),
                     "mse_median": float(np.median(d["mse"])), "mse_max": float(d["mse"].max()),
                     "failed": int((d["mse"] > RECON_FAIL_MSE).sum()), "psnr": float(np.mean(d["psnr"])),
                     "x_T_std": float(x_T.std()),
                     "paper_cifar10_mse": dict(zip(PAPER_RECON_STEPS, PAPER_RECON_MSE)).get(S, float("nan"))})
        recs.append((S, rec))
        log.info("reconstruction at %d steps: MSE %.2e", S, rows[-1]["mse"])
    write_csv(out_csv, pd.DataFrame(rows))
    k = min(8, x0.shape[0])
    grid = [[x0[i] for i in range(k)]] + [[r[i] for i in range(k)] for _, r in recs]
    fig = image_grid(grid, row_labels=["input"] + [f"S = {s}" for s, _ in recs], cell_inches=0.55)
    save_figure(out_png, fig)


def run_interpolation(model: str, out_png: str, *, pairs: int, points: int, steps: int, sampling: dict, seed: int,
                      device: str = "auto") -> None:
    """Rule ``ddim_interpolation``: slerp between ``pairs`` pairs of x_T, decoded with DDIM (eta = 0)."""
    from .ddim import load_model
    from .figures import image_grid
    from .io import save_figure
    from .models import resolve_device

    dev = resolve_device(device)
    unet, schedule, prediction_type = load_model(model, dev)
    gen = make_generator(seed, "ddim_interpolation")
    ends = torch.randn((int(pairs), 2, *image_shape(unet)), generator=gen)
    alphas = np.linspace(0.0, 1.0, int(points))
    z = torch.stack([slerp(p[0], p[1], float(a)) for p in ends for a in alphas])
    x = ddim_sample(unet, z.to(dev), schedule, int(steps), skip_type=sampling["skip_type"],
                    clip_sample=bool(sampling["clip_sample"]), prediction_type=prediction_type).to("cpu")
    grid = [[x[i * len(alphas) + j] for j in range(len(alphas))] for i in range(int(pairs))]
    fig = image_grid(grid, col_labels=[f"{a:.2g}" for a in alphas], cell_inches=0.55)
    fig.supxlabel("interpolation weight alpha (slerp between two x_T)", fontsize=8)
    fig.tight_layout()
    save_figure(out_png, fig)


# ------------------------------------------------------------------------------------ claims
def _resolved(sub, a: str, b: str) -> bool:
    """Is cell ``a`` below cell ``b`` by more than twice the error of the difference (the two
    cells' bootstrap errors in quadrature, an upper bound of the paired error)?"""
    err = float(np.hypot(sub.loc[a, "fd_boot_std"], sub.loc[b, "fd_boot_std"]))
    return float(sub.loc[b, "fd"]) - float(sub.loc[a, "fd"]) > 2.0 * err


def ordering_claims(df) -> dict:
    """The paper's orderings, tested on this run's table (a DataFrame of :func:`run_quality_table`).

    For the smallest and the largest S: ``best`` (lowest-FD variant here), ``paper_best`` (the
    paper's), and ``verdict``:

    * ``agrees``: the paper's winner is lowest here too, below every other variant by more than
      twice the bootstrap error of the difference;
    * ``differs``: another variant is below the paper's winner by more than that margin;
    * ``tied``: neither: the paper's winner is within the sampling error of the lowest, so this run
      cannot tell the ordering at this sample size.
    """
    out = {}
    cells = df[df["variant"] != "real digits"]
    if cells.empty:
        return out
    steps = sorted(int(s) for s in cells["steps"].unique())
    for key, s in (("few", steps[0]), ("many", steps[-1])):
        sub = cells[cells["steps"] == s].set_index("variant")
        best = str(sub["fd"].idxmin())
        paper_col = {v: dict(zip(PAPER_STEPS, vals)).get(s) for v, vals in PAPER_FID.items() if v in sub.index}
        paper_col = {v: x for v, x in paper_col.items() if x is not None}
        paper_best = min(paper_col, key=paper_col.get) if paper_col else None
        if paper_best is None:
            verdict = "no paper value"
        elif best == paper_best and all(_resolved(sub, best, v) for v in sub.index if v != best):
            verdict = "agrees"
        elif best != paper_best and _resolved(sub, best, paper_best):
            verdict = "differs"
        else:
            verdict = "tied"
        out[key] = {"steps": s, "best": best, "paper_best": paper_best, "verdict": verdict,
                    "best_fd": float(sub.loc[best, "fd"]), "best_err": float(sub.loc[best, "fd_boot_std"])}
    return out


def quality_goals(df, eta_label: str, ddpm_recognisability: float | None) -> dict:
    """The embedded model's goals on the deterministic sampler's cells at S >= 20 (thresholds above)."""
    sub = df[(df["variant"] == eta_label) & (df["steps"] >= 20)]
    if sub.empty:
        return {}
    worst_conf = float(sub["confident_fraction"].min())
    worst_recog = float(sub["recognisability"].min())
    max_pix = float(sub["max_abs_pixel"].max())
    return {
        "worst_confident": worst_conf, "confident_ok": worst_conf >= CONFIDENT_GOAL, "confident_goal": CONFIDENT_GOAL,
        "worst_recog": worst_recog, "recog_gap": RECOG_GAP,
        "recog_ok": None if ddpm_recognisability is None else worst_recog >= ddpm_recognisability - RECOG_GAP,
        "max_abs_pixel": max_pix, "pixel_bound": PIXEL_BOUND, "pixel_ok": max_pix <= PIXEL_BOUND,
    }


def neighbours_resolved(pairs_df) -> dict:
    """How many neighbouring-cell differences exceed their paired-bootstrap error (|change| > 2 std)."""
    if pairs_df is None or pairs_df.empty:
        return {"resolved": 0, "total": 0}
    ok = (pairs_df["fd_change"].abs() > 2.0 * pairs_df["change_boot_std"])
    return {"resolved": int(ok.sum()), "total": int(len(ok)), "factor": 2.0}
