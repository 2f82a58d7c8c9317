"""The report's DDIM section, read from the stage's CSV and PNG files (no torch).

The claims of the prose are chosen here from the numbers, each with its threshold
(:mod:`diffusion_report.stages.ddim_cells`): the eta ordering of Table 1 against the paper's,
whether neighbouring cells are resolved by the bootstrap, the goals of the embedded model.
"""

from __future__ import annotations

import math

import numpy as np
from markupsafe import Markup, escape

from diffusion_report.report.latex import inline_tex
from diffusion_report.stages import ddim_cells as C


def variant_markup(variant: str) -> Markup:
    r"""A sampler variant of the quality table (:func:`ddim_cells.variant_label`) as the text writes it,
    typeset like the theory section: ``eta=0.2`` -> $\eta = 0.2$, ``sigma_hat`` -> $\hat\sigma$."""
    if variant == "sigma_hat":
        return Markup(inline_tex(r"$\hat\sigma$"))
    if variant.startswith("eta="):
        return Markup(inline_tex(f"$\\eta = {float(variant[4:]):g}$"))
    return escape(variant)


SSIM_SAME = 0.9  # DDIM samples are "nearly the same images" as the reference step count's from this SSIM on


def _fmt_row(r: dict) -> dict:
    out = {"sampler": f"{r['sampler'].upper()} {int(r['steps'])}", "steps (NFE)": int(r["nfe"])}
    is_ref = r["label"] == r["reference"]
    out["MSE to ref."] = "reference" if is_ref else float(r["mse"])
    out["PSNR (dB)"] = "reference" if is_ref else float(r["psnr"])
    out["SSIM"] = "reference" if is_ref else float(r["ssim"])
    if "recognisability" in r and r["recognisability"] == r["recognisability"]:
        out["recognisability"] = float(r["recognisability"])
        out["confident (p >= 0.9)"] = float(r["confident_fraction"])
    if "wall_s" in r:
        out["wall time (s)"] = float(r["wall_s"])
        out["s / image"] = float(r["s_per_image"])
    return out


def report_context(files: dict[str, str], config: dict) -> dict:
    """Plain data for ``report/templates/sections/ddim.html.j2`` (numbers read from results).

    ``files``: grid, convergence, metrics, timing, and for the trained model classifier,
    loss_plot, loss_csv.
    """
    import pandas as pd


    dcfg = config["ddim"]
    m = pd.read_csv(files["metrics"])
    t = pd.read_csv(files["timing"])
    merged = m.merge(t[["label", "wall_s", "s_per_image", "device", "threads", "precision"]], on="label", how="left")
    recs = merged.to_dict("records")
    ddim_rows = merged[merged["sampler"] == "ddim"].sort_values("steps")
    ref_label = str(m["reference"].iloc[0])
    ref = merged[merged["label"] == ref_label].iloc[0]
    non_ref = ddim_rows[ddim_rows["label"] != ref_label]
    fewest = ddim_rows.iloc[0]
    ctx: dict = {
        "grid": files["grid"],
        "convergence": files["convergence"],
        "rows": [_fmt_row(r) for r in recs],
        "source": dcfg["model"]["source"],
        "pretrained": dcfg["model"]["pretrained"],
        "step_counts": [int(s) for s in ddim_rows["steps"]],
        "num_samples": int(dcfg["num_samples"]),
        "eta": float(dcfg["eta"]),
        "skip_type": str(dcfg["skip_type"]),
        "clip_sample": bool(dcfg["clip_sample"]),
        "seed": int(config["seed"]),
        "reference_steps": int(ref["steps"]),
        "device": str(ref["device"]),
        "threads": int(ref["threads"]),
        "precisions": sorted(set(str(p) for p in merged["precision"].dropna())),
        "precision_setting": str(dcfg.get("precision", "float32")),
        "fewest_steps": int(fewest["steps"]),
        "fewest_mse": float(fewest["mse"]) if fewest["label"] != ref_label else 0.0,
        "fewest_ssim": float(fewest["ssim"]) if fewest["label"] != ref_label else 1.0,
        "speedup_fewest": float(ref["wall_s"] / fewest["wall_s"]) if fewest["wall_s"] > 0 else float("nan"),
        "ref_s_per_image": float(ref["s_per_image"]),
        "fewest_s_per_image": float(fewest["s_per_image"]),
    }
    # every key the template tests exists (the report renders with StrictUndefined)
    ctx.update({"ddpm": None, "classifier": None, "loss_plot": None, "train": None})
    good = non_ref[non_ref["ssim"] >= SSIM_SAME]
    ctx["steps_ssim_09"] = int(good["steps"].min()) if len(good) else None
    dp = merged[merged["sampler"] == "ddpm"]
    if len(dp):
        ctx["ddpm"] = {"steps": int(dp["steps"].iloc[0]), "mse": float(dp["mse"].iloc[0]), "ssim": float(dp["ssim"].iloc[0]),
                       "s_per_image": float(dp["s_per_image"].iloc[0]), "recognisability": None}
        if "recognisability" in dp.columns:
            ctx["ddpm"]["recognisability"] = float(dp["recognisability"].iloc[0])
    if "recognisability" in merged.columns and files.get("classifier"):
        c = pd.read_csv(files["classifier"]).iloc[0]
        ctx["classifier"] = {"accuracy": float(c["test_accuracy"]), "n_train": int(c["n_train"]), "n_test": int(c["n_test"])}
        ctx["recog"] = {int(r["steps"]): float(r["recognisability"]) for _, r in ddim_rows.iterrows()}
        ctx["recog_fewest"] = float(fewest["recognisability"])
        ctx["recog_ref"] = float(ref["recognisability"])
        ctx["recog_real"] = float(ref["real_recognisability"])
    if files.get("loss_plot"):
        ctx["loss_plot"] = files["loss_plot"]
    if files.get("loss_csv"):
        lc = pd.read_csv(files["loss_csv"])
        tr = dcfg["train"]
        ctx["train"] = {"steps": int(len(lc)), "first_loss": float(lc["loss_smoothed"].iloc[min(len(lc) - 1, 49)]),
                        "final_loss": float(lc["loss_smoothed"].iloc[-1]),
                        "image_size": int(tr["image_size"]), "channels": list(tr["channels"]),
                        "batch_size": int(tr["batch_size"]), "learning_rate": float(tr["learning_rate"]),
                        "ema_decay": float(tr["ema_decay"]), "shipped": not bool(dcfg.get("retrain", True)),
                        "weights": str(dcfg.get("weights", ""))}
    # every DDIM sample's largest |pixel| before display clamping (the data range is [-1, 1])
    ctx["max_abs_pixel"] = float(m.loc[m["sampler"] == "ddim", "max_abs_pixel"].max()) if "max_abs_pixel" in m.columns else None
    # and how many samples of the step count with the most have a pixel beyond the bound
    ctx["outside_bound"] = int(m.loc[m["sampler"] == "ddim", "outside_bound"].max()) if "outside_bound" in m.columns else None
    ctx["pixel_bound"] = C.PIXEL_BOUND
    ctx.update(experiments_context(files, ctx))
    if ctx.get("quality"):
        # cells other rules drew (ddim_cells.reused_cells): the grid's own eta at its step counts,
        # and the DDPM baseline as eta = 1 at S = T
        q = ctx["quality"]
        q["reused"] = {s_: C.reused_cells({"eta": ctx["eta"], "skip_type": dcfg.get("skip_type", "uniform")}, s_,
                                          dcfg.get("step_counts", []), q["variants"], ddpm_baseline=bool(dcfg.get("ddpm_baseline")),
                                          T=config.get("schedule", {}).get("T")) for s_ in q["steps"]}
    return ctx


def experiments_context(files: dict[str, str], ctx: dict) -> dict:
    """The DDIM paper's experiments for the report: the quality table beside the paper's, the
    claims chosen from the numbers (see :mod:`ddim_experiments` for thresholds), reconstruction."""
    import pandas as pd

    from diffusion_report.report.render import fmt

    out: dict = {"quality": None, "recon": None, "interp": files.get("interp_png")}
    if files.get("quality_csv"):
        q = pd.read_csv(files["quality_csv"])
        pairs = pd.read_csv(files["quality_pairs"])
        cells = q[q["variant"] != "real digits"]
        variants = list(dict.fromkeys(cells["variant"]))
        steps = sorted(int(s) for s in cells["steps"].unique())
        rows = []
        for v in variants:
            row = {"sampler": variant_markup(v)}
            for s_ in steps:
                c = cells[(cells["variant"] == v) & (cells["steps"] == s_)].iloc[0]
                row[f"S = {s_}"] = f"{fmt(c['fd'], 3)} ± {fmt(c['fd_boot_std'], 2)}"
            rows.append(row)
        paper_rows = []
        for v in variants:
            pv = C.PAPER_FID.get(v)
            if pv:
                d = dict(zip(C.PAPER_STEPS, pv))
                paper_rows.append({"sampler": variant_markup(v), **{f"S = {s_}": (d[s_] if s_ in d else "n/a") for s_ in steps}})
        real = q[q["variant"] == "real digits"]
        ddpm_recog = ctx["ddpm"]["recognisability"] if ctx.get("ddpm") else None
        eta_label = C.variant_label(ctx["eta"])
        out["quality"] = {
            "png": files["quality_png"], "rows": rows, "paper_rows": paper_rows, "steps": steps,
            "num_samples": int(cells["num_samples"].iloc[0]), "claims": ordering_claims(q, pairs),
            "resolved": neighbours_resolved(pairs, int(cells["num_samples"].iloc[0])), "goals": quality_goals(q, eta_label, ddpm_recog),
            "coupling": coupling_gain(q, pairs),
            "eta_label": eta_label, "variants": variants,
            # each variant as the prose names it (the claims and goals name variants by their labels)
            "names": {v: variant_markup(v) for v in dict.fromkeys([*variants, *C.PAPER_FID, eta_label])},
            "etas": [f"{e:g}" for e in (float(v[4:]) for v in variants if v.startswith("eta="))],
            "sigma_hat": "sigma_hat" in variants,
            "real_fd": float(real["fd"].iloc[0]) if len(real) else None,
            "real_err": float(real["fd_boot_std"].iloc[0]) if len(real) else None,
            "conf_rows": [{"sampler": variant_markup(v), **{f"S = {s_}": float(cells[(cells["variant"] == v) & (cells["steps"] == s_)]["confident_fraction"].iloc[0]) for s_ in steps}} for v in variants],
        }
    if files.get("recon_csv"):
        r = pd.read_csv(files["recon_csv"]).sort_values("steps")
        mse = r["mse"].tolist()
        med = r["mse_median"].tolist() if "mse_median" in r.columns else mse
        out["recon"] = {
            "png": files["recon_png"],
            "rows": [{"S": int(x["steps"]), "MSE, mean": float(x["mse"]), "MSE, median": float(x.get("mse_median", x["mse"])),
                      f"failed (MSE > {C.RECON_FAIL_MSE:g})": int(x.get("failed", 0)), "PSNR (dB), mean": float(x["psnr"]),
                      "paper CIFAR-10 MSE": float(x["paper_cifar10_mse"])} for _, x in r.iterrows()],
            "num_images": int(r["num_images"].iloc[0]),
            "precision": str(r["precision"].iloc[0]),
            "monotone": all(a > b for a, b in zip(mse, mse[1:])),
            "median_monotone": all(a > b for a, b in zip(med, med[1:])),
            "first": {"steps": int(r["steps"].iloc[0]), "mse": float(mse[0]), "median": float(med[0])},
            "last": {"steps": int(r["steps"].iloc[-1]), "mse": float(mse[-1]), "median": float(med[-1]),
                     "failed": int(r["failed"].iloc[-1]) if "failed" in r.columns else 0},
            "fail_mse": C.RECON_FAIL_MSE,
        }
    return out


# ------------------------------------------------------------------------------------ claims
def _diff_error(sub, pairs, steps: int, a: str, b: str) -> float:
    """The bootstrap error of cell b - cell a at one S: the paired error from ``ddim_quality``'s
    pairs table when it has the two (either order), else the cells' errors in quadrature (an upper
    bound of the paired error when the cells are positively correlated)."""
    if pairs is not None and "steps_to" in pairs.columns:
        at = pairs[(pairs["steps_from"] == steps) & (pairs["steps_to"] == steps)]
        hit = at[at["variant"].isin([f"{a} -> {b}", f"{b} -> {a}"])]
        if len(hit):
            return float(hit["change_boot_std"].iloc[0])
    return float(np.hypot(sub.loc[a, "fd_boot_std"], sub.loc[b, "fd_boot_std"]))


def _resolved(sub, a: str, b: str, err: float) -> bool:
    """Is cell ``a`` below cell ``b`` by more than twice ``err``, the error of their difference?"""
    return float(sub.loc[b, "fd"]) - float(sub.loc[a, "fd"]) > 2.0 * err


def ordering_claims(df, pairs=None) -> dict:
    """The paper's orderings, tested on this run's table (a DataFrame of :func:`ddim_quality`;
    ``pairs``: its pairs table, for the paired errors of the differences).

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
        err = {v: _diff_error(sub, pairs, s, best, v) for v in sub.index if v != best}
        paper_col = {v: dict(zip(C.PAPER_STEPS, vals)).get(s) for v, vals in C.PAPER_FID.items() if v in sub.index}
        paper_col = {v: x for v, x in paper_col.items() if x is not None}
        paper_best = min(paper_col, key=paper_col.get) if paper_col else None
        if paper_best is None:
            verdict = "no paper value"
        elif best == paper_best and all(_resolved(sub, best, v, e) for v, e in err.items()):
            verdict = "agrees"
        elif best != paper_best and _resolved(sub, best, paper_best, err[paper_best]):
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
        "worst_confident": worst_conf, "confident_ok": worst_conf >= C.CONFIDENT_GOAL, "confident_goal": C.CONFIDENT_GOAL,
        "worst_recog": worst_recog, "recog_gap": C.RECOG_GAP,
        "recog_ok": None if ddpm_recognisability is None else worst_recog >= ddpm_recognisability - C.RECOG_GAP,
        "max_abs_pixel": max_pix, "pixel_bound": C.PIXEL_BOUND, "pixel_ok": max_pix <= C.PIXEL_BOUND,
        # the most samples beyond the bound in one of those cells, and the cell size
        "outside": int(sub["outside_bound"].max()) if "outside_bound" in sub.columns else None,
        "num_samples": int(sub["num_samples"].max()),
    }


def coupling_gain(df, pairs_df) -> dict | None:
    """What the shared noise path buys, from the run: for each stochastic variant (eta > 0 and
    sigma-hat) and two neighbouring step counts, the two cells' bootstrap errors in quadrature (the
    error of their difference if the cells were drawn independently) over the paired error of the
    difference. ``{"median": ..., "min": ..., "n": ...}``, or None without such pairs."""
    if pairs_df is None or pairs_df.empty or df is None or df.empty:
        return None
    err = {(str(r["variant"]), int(r["steps"])): float(r["fd_boot_std"]) for _, r in df.iterrows()}
    ratios = []
    for _, r in pairs_df.iterrows():
        v = str(r["variant"])
        if v == "eta=0" or " -> " in v or int(r["steps_from"]) == int(r["steps_to"]) or float(r["change_boot_std"]) <= 0:
            continue  # the deterministic sampler has no noise; variant pairs are not along S
        a, b = err.get((v, int(r["steps_from"]))), err.get((v, int(r["steps_to"])))
        if a is None or b is None:
            continue
        ratios.append(float(np.hypot(a, b)) / float(r["change_boot_std"]))
    if not ratios:
        return None
    return {"median": float(np.median(ratios)), "min": float(np.min(ratios)), "n": len(ratios)}


def neighbours_resolved(pairs_df, num_samples: int | None = None) -> dict:
    """How many neighbouring-cell differences exceed their paired-bootstrap error (|change| > 2 std).

    With ``num_samples`` (per cell), also ``n_half``: the samples per cell at which the median
    unresolved difference, at its observed size, would exceed twice its error, which shrinks as
    1/sqrt(n): n (2 std / |change|)^2 (None when every difference is resolved). A rough guide for
    sizing a larger run: the observed differences are noisy themselves.
    """
    if pairs_df is None or pairs_df.empty:
        return {"resolved": 0, "total": 0}
    if "neighbours" in pairs_df.columns:  # the table also holds every two variants at one S
        pairs_df = pairs_df[pairs_df["neighbours"].astype(bool)]
    change, err = pairs_df["fd_change"].abs(), pairs_df["change_boot_std"]
    ok = change > 2.0 * err
    out = {"resolved": int(ok.sum()), "total": int(len(ok)), "factor": 2.0}
    if num_samples:
        need = [int(num_samples) * (2.0 * e / c) ** 2 for c, e in zip(change[~ok], err[~ok]) if c > 0]
        out["n_half"] = int(math.ceil(float(np.median(need)))) if need else None
    return out



def answer(ctx: dict, config: dict) -> dict:
    """Exercise 4 at a glance: DDIM from one x_T, how many steps give the reference images, and
    whether the digits stay recognisable (no timings here: they are measured, not computed)."""
    from markupsafe import Markup

    from diffusion_report.report.render import fmt

    model = "the embedded digits DDPM" if ctx["source"] == "train" else ctx["pretrained"]
    ref, steps = ctx["reference_steps"], ctx["step_counts"]
    out = [Markup("From one fixed x<sub>T</sub> of {} images, {} is sampled with DDIM (&eta; = {}) at S = {} steps{}").format(
        ctx["num_samples"], model, fmt(ctx["eta"], 3), ", ".join(map(str, steps)),
        f" and with DDPM's {ctx['ddpm']['steps']} steps." if ctx["ddpm"] else ".")]
    if ctx["steps_ssim_09"] is not None:
        out.append(f"From S = {ctx['steps_ssim_09']} on, the samples are within SSIM {SSIM_SAME} of the S = {ref} samples "
                   "drawn from the same noise: far fewer steps give nearly the same images.")
    else:
        out.append(f"No step count below {ref} comes within SSIM {SSIM_SAME} of the S = {ref} samples drawn from the same noise.")
    if ctx.get("recog"):
        out.append(f"The digit reader's recognisability is {fmt(ctx['recog_fewest'], 3)} at S = {ctx['fewest_steps']} and "
                   f"{fmt(ctx['recog_ref'], 3)} at S = {ref} (held-out real digits: {fmt(ctx['recog_real'], 3)}).")
    return {"exercises": "4", "sentences": out}

