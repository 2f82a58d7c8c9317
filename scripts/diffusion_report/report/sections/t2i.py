"""The report's text-to-image section, read from the stage's CSV and PNG files (no torch).
"""

from __future__ import annotations

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
        "n_better_success": sum(c["better_success"] for c in comparisons),
        "n_edits": len(comparisons),
        "figures": {k: files[k] for k in ("loss_plot", "samples", "eval_examples")},
    }
