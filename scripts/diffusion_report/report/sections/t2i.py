"""The report's text-to-image section, read from the stage's CSV and PNG files (no torch).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


# --------------------------------------------------------------------------- report
def report_context(files: dict[str, str], config: dict) -> dict:
    """Plain data for the report's t2i section (every number read from the rule outputs)."""
    cfg = config["t2i"]
    summary = {k: (v.item() if hasattr(v, "item") else v) for k, v in pd.read_csv(files["summary"]).iloc[0].to_dict().items()}
    reader = pd.read_csv(files["reader"])
    acc = pd.read_csv(files["accuracy"])
    ev = pd.read_csv(files["eval_summary"])
    g = float(cfg["eval"]["guidance_scale"])
    at_g = acc.loc[(acc["guidance"] - g).abs().idxmin()].to_dict()
    best = acc.loc[acc["all_acc"].idxmax()].to_dict()
    worst = acc.loc[acc["all_acc"].idxmin()].to_dict()
    comparisons = []
    for edit, grp in ev.groupby("edit", sort=False):
        m = {r["method"]: r for r in grp.to_dict("records")}
        if "p2p" not in m or "baseline" not in m:
            continue
        p, b = m["p2p"], m["baseline"]
        comparisons.append(
            {
                "edit": edit,
                "n": int(p["n"]),
                "p2p_success": p["success"],
                "baseline_success": b["success"],
                "p2p_iou": p["mask_iou"],
                "baseline_iou": b["mask_iou"],
                "iou_gain": p["mask_iou"] - b["mask_iou"],
                "p2p_kept": p["all_kept"],
                "baseline_kept": b["all_kept"],
                "p2p_shift": p["centroid_shift_px"],
                "baseline_shift": b["centroid_shift_px"],
                "better_iou": bool(p["mask_iou"] > b["mask_iou"]),
                "better_success": bool(p["success"] > b["success"]),
            }
        )
    rows = [
        {
            "edit": r["edit"],
            "method": r["method"],
            "n": int(r["n"]),
            "source ok": r["source_ok"],
            "success": r["success"],
            "untouched kept": r["all_kept"],
            "mask IoU": r["mask_iou"],
            "centroid shift (px)": r["centroid_shift_px"],
            "radius change (px)": r["radius_change_px"],
        }
        for r in ev.to_dict("records")
    ]
    clean = reader.loc[reader["noise"].idxmin()].to_dict()
    noisy = reader.loc[reader["noise"].idxmax()].to_dict()
    return {
        "trained_here": bool(cfg["train"]),
        "weights": cfg["weights"],
        "summary": summary,
        "data": cfg["data"],
        "model": cfg["model"],
        "schedule": cfg["schedule"],
        "training": cfg["training"],
        "eval": cfg["eval"],
        "reader_cfg": cfg["reader"],
        "reader_rows": reader.to_dict("records"),
        "reader_clean": clean,
        "reader_noisy": noisy,
        "accuracy_rows": acc.to_dict("records"),
        "acc_at_g": at_g,
        "acc_best": best,
        "acc_worst": worst,
        "eval_rows": rows,
        "comparisons": comparisons,
        "n_better_iou": sum(c["better_iou"] for c in comparisons),
        "mean_iou_gain": float(np.mean([c["iou_gain"] for c in comparisons])) if comparisons else 0.0,
        "mean_success_gain": float(np.mean([c["p2p_success"] - c["baseline_success"] for c in comparisons])) if comparisons else 0.0,
        "n_better_success": sum(c["better_success"] for c in comparisons),
        "n_edits": len(comparisons),
        "figures": {k: files[k] for k in ("loss_plot", "samples", "eval_examples")},
    }


def answer(ctx: dict, config: dict) -> dict:
    """Exercise 5 measured against ground truth: per edit type, prompt-to-prompt against no control."""
    from diffusion_report.report.render import pct

    comps = ctx["comparisons"]
    if not comps:
        return {"exercises": "5", "sentences": ["The ground-truth evaluation compared no edit type (none configured)."]}
    n, seeds = ctx["n_edits"], comps[0]["n"]
    worst = min(comps, key=lambda c: c["p2p_success"])
    return {"exercises": "5", "sentences": [
        f"Against ground truth ({seeds} random cases per edit type, read back by the attribute reader), prompt-to-prompt "
        f"keeps the shape's outline better than sampling the edited prompt without control (higher mask IoU) in "
        f"{ctx['n_better_iou']} of {n} edit types, and reaches the edited attribute more often in "
        f"{ctx['n_better_success']} of {n}.",
        f"Its weakest edit type is {worst['edit']}: {pct(worst['p2p_success'], 3)} of its edits reach the target "
        f"(without control: {pct(worst['baseline_success'], 3)}).",
    ]}

