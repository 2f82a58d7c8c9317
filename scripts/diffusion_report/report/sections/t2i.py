"""The report's text-to-image section, read from the stage's CSV and PNG files (no torch).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# --------------------------------------------------------------------------- goals
# The goals of a working prompt-to-prompt (the project's issue 16), stated next to the function that checks them.
GOAL_RATE = 0.9  # p2p reaches the target attribute at >= 0.9x the no-control baseline's rate
GOAL_IOU_GAIN = 0.2  # and keeps the layout better: mask IoU with the source >= the baseline's + 0.2
GOAL_SHIFT_PX = 1.0  # with the object's centroid moving at most 1 px on average
# The edit types the three goals are set for (word swaps and refinement). A reweight of a prompt that
# already says "big" has the unedited image as its baseline (IoU 1), so it is judged by its sweep instead.
GOAL_EDIT_TYPES = ("shape_swap", "colour_swap", "background_swap", "refine_big", "refine_colour")


# With two objects the edit names one of them; the other must keep its shape, colour and place (centroid within
# 1 px, the same MAX_SHIFT_PX as the showcase's "in place") in at least this share of the seeds.
GOAL_OTHER_KEPT = 0.9
PAIR_EDIT_TYPES = ("pair_colour_swap", "pair_shape_swap")


def two_object_settings(eval_cfg: dict) -> str:
    """The two-object edit types' own settings (``t2i.eval.two_object``) in words; "" when they have none."""
    own = eval_cfg.get("two_object") or {}
    parts = []
    if own.get("self_replace_steps") is not None:
        parts.append(f"self-attention injected during the first {float(own['self_replace_steps']) * 100:.0f}% of the steps")
    if own.get("blend_threshold") is not None:
        parts.append(f"a local blend on the edited object's colour and shape words, found by their place in the caption since one "
                     f"word may name both objects, at mask threshold {float(own['blend_threshold']):g}, so that outside the mask the edit "
                     f"keeps the source")
    return " and ".join(parts)


def meets_pair_goals(p_success: float, b_success: float, p_other: float, p_other_ok: float = float("nan")) -> dict:
    """Which goals one two-object prompt-to-prompt result meets: the target rate against the
    baseline's (as :func:`meets_goals`) and the object not named kept in >= :data:`GOAL_OTHER_KEPT`.
    ``sources_cause``: the other object is kept too rarely over all seeds but often enough over the
    seeds whose source is as captioned (``p_other_ok``); the report then counts the misses whose
    source the model drew otherwise (:func:`pair_losses`)."""
    rate = bool(p_success >= GOAL_RATE * b_success)
    other = bool(p_other == p_other and p_other >= GOAL_OTHER_KEPT)
    sources_cause = bool(not other and p_other_ok == p_other_ok and p_other_ok >= GOAL_OTHER_KEPT)
    return {"rate": rate, "other": other, "all": rate and other, "sources_cause": sources_cause}


def pair_losses(p_other: float, n: int, p_other_ok: float, n_ok: int) -> tuple[int, int]:
    """(seeds whose other object is not kept, how many of them have a source not as captioned), from
    the kept shares over all ``n`` seeds and over the ``n_ok`` whose source is as captioned."""
    losses = int(round((1 - p_other) * n))
    return losses, losses - (int(round((1 - p_other_ok) * n_ok)) if n_ok else 0)


def meets_goals(p_success: float, b_success: float, p_iou: float, b_iou: float, p_shift: float) -> dict:
    """Which of the three goals one prompt-to-prompt result meets against its baseline."""
    rate = bool(p_success >= GOAL_RATE * b_success)
    layout = bool(p_iou >= b_iou + GOAL_IOU_GAIN)
    shift = bool(p_shift == p_shift and p_shift <= GOAL_SHIFT_PX)
    return {"rate": rate, "layout": layout, "shift": shift, "all": rate and layout and shift}


LOCALISED_RATIO = 1.5  # a word's cross-attention "lies on the object" when it is this much denser inside than outside


def localisation_summary(df: pd.DataFrame) -> dict | None:
    """The attention-localisation table's rows and which caption words attend on the object
    (inside/outside ratio >= :data:`LOCALISED_RATIO`), for the report's sentences."""
    if df.empty:
        return None
    rows = [{"word": r["word"], "images": int(r["images"]), "inside": r["inside"], "outside": r["outside"],
             "inside / outside": r["ratio"], "images inside > outside": r["share_above_1"]} for r in df.to_dict("records")]
    ratio = {r["word"]: float(r["ratio"]) for r in df.to_dict("records")}
    on = [w for w, v in ratio.items() if v >= LOCALISED_RATIO]
    top = max(ratio, key=ratio.get)
    return {"rows": rows, "ratio": ratio, "on": on, "top": top,
            "top_ratio": ratio[top], "n": int(df["images"].max()), "threshold": LOCALISED_RATIO,
            "content_on": [w for w in ("colour word", "shape word") if w in on]}


TRADEOFF_MIN_RATE = 0.1  # a change of the target rate along the sweep counts from this share of seeds (> 1 of 12)
TRADEOFF_MIN_IOU = 0.05  # a change of the mean mask IoU along the sweep counts from this


def tradeoff_summary(df: pd.DataFrame) -> list[dict]:
    """Per swept edit type: the baseline's point, the p2p curve's ends (least and most injection),
    whether the IoU rises and the target rate falls between them (by at least
    :data:`TRADEOFF_MIN_IOU` / :data:`TRADEOFF_MIN_RATE`), and the fractions whose point meets every
    goal of :func:`meets_goals`."""
    out = []
    for edit, d in df.groupby("edit", sort=False):
        b = d[d["method"] == "baseline"].iloc[0]
        p = d[d["method"] == "p2p"].sort_values("cross_replace_steps")
        points = [dict(r, goals=meets_goals(r["success"], b["success"], r["mask_iou"], b["mask_iou"], r["centroid_shift_px"]))
                  for r in p.to_dict("records")]
        lo, hi = points[0], points[-1]
        out.append({
            "edit": edit, "n": int(b["n"]), "baseline_success": float(b["success"]), "baseline_iou": float(b["mask_iou"]),
            "lo": lo, "hi": hi, "meeting": [pt["cross_replace_steps"] for pt in points if pt["goals"]["all"]],
            "iou_rises": bool(hi["mask_iou"] >= lo["mask_iou"] + TRADEOFF_MIN_IOU),
            "success_falls": bool(hi["success"] <= lo["success"] - TRADEOFF_MIN_RATE),
            "min_rate": TRADEOFF_MIN_RATE, "min_iou": TRADEOFF_MIN_IOU,
        })
    return out


def reweight_summary(df: pd.DataFrame) -> dict:
    """The reweighting sweep per scale (means over seeds) and how the object's mean area change
    follows the scale: ``rises`` (it grows at every step of the sorted scales), ``never_falls``
    (it grows or stays), else it falls somewhere (``falls_at``: the first pair of scales where it
    does); the issue's goal is a monotone change. Also how many seeds grow or stay at every step on
    their own."""
    per = df.groupby("scale", sort=True).agg(area_change=("area_change_px", "mean"), read_big=("read_big", "mean"),
                                             kept=("all_kept", "mean"), shift=("centroid_shift_px", "mean")).reset_index()
    rows = per.to_dict("records")
    steps = list(zip(rows, rows[1:]))
    falls = [(a["scale"], b["scale"]) for a, b in steps if b["area_change"] < a["area_change"]]
    pivot = df.pivot(index="seed_index", columns="scale", values="area_px").sort_index(axis=1)
    seeds_monotone = int((np.diff(pivot.to_numpy(), axis=1) >= 0).all(axis=1).sum())
    return {
        "rows": rows, "n": int(pivot.shape[0]), "scales": [r["scale"] for r in rows],
        "rises": all(b["area_change"] > a["area_change"] for a, b in steps),
        "never_falls": not falls, "falls_at": falls[0] if falls else None,
        "lo": rows[0], "hi": rows[-1], "seeds_monotone": seeds_monotone,
        "kept_min": min(r["kept"] for r in rows), "shift_max": max(r["shift"] for r in rows),
    }


# --------------------------------------------------------------------------- report
def report_context(files: dict[str, str], config: dict) -> dict:
    """Plain data for the report's t2i section (every number read from the rule outputs)."""
    cfg = config["t2i"]
    summary = {k: (v.item() if hasattr(v, "item") else v) for k, v in pd.read_csv(files["summary"]).iloc[0].to_dict().items()}
    reader_all = pd.read_csv(files["reader"])
    objects = reader_all["objects"] if "objects" in reader_all else pd.Series(1, index=reader_all.index)
    reader, reader_pairs = reader_all[objects == 1], reader_all[objects == 2]
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
                "p2p_radius": p["radius_change_px"],
                "baseline_radius": b["radius_change_px"],
                "goals": meets_goals(p["success"], b["success"], p["mask_iou"], b["mask_iou"], p["centroid_shift_px"]),
                "better_iou": bool(p["mask_iou"] > b["mask_iou"]),
                "better_success": bool(p["success"] > b["success"]),
                "pair": edit in PAIR_EDIT_TYPES,
                "p2p_other": p.get("other_kept", float("nan")),
                "baseline_other": b.get("other_kept", float("nan")),
                "p2p_other_ok": p.get("other_kept_source_ok", float("nan")),
                "baseline_other_ok": b.get("other_kept_source_ok", float("nan")),
                "n_source_ok": int(round(p["source_ok"] * p["n"])),
            }
        )
        if edit in PAIR_EDIT_TYPES:
            c = comparisons[-1]
            c["pair_goals"] = meets_pair_goals(p["success"], b["success"], c["p2p_other"], c["p2p_other_ok"])
            c["losses"], c["losses_elsewhere"] = pair_losses(c["p2p_other"], c["n"], c["p2p_other_ok"], c["n_source_ok"])
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
            **({"other object kept": r["other_kept"]} if "other_kept" in ev and ev["edit"].isin(PAIR_EDIT_TYPES).any() else {}),
        }
        for r in ev.to_dict("records")
    ]
    pairs = [c for c in comparisons if c["pair"]]
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
        "reader_rows": reader_all.to_dict("records"),
        "reader_pairs": reader_pairs.loc[reader_pairs["noise"].idxmin()].to_dict() if len(reader_pairs) else None,
        "two_objects": float(cfg["data"].get("two_objects", 0.0)),
        "reader_clean": clean,
        "reader_noisy": noisy,
        "accuracy_rows": acc.to_dict("records"),
        "acc_at_g": at_g,
        "acc_best": best,
        "acc_best_scales": [float(v) for v in acc.loc[acc["all_acc"] == best["all_acc"], "guidance"]],  # ties: every scale at the best
        "acc_worst": worst,
        "eval_rows": rows,
        "comparisons": comparisons,
        "n_better_iou": sum(c["better_iou"] for c in comparisons),
        "mean_iou_gain": float(np.mean([c["iou_gain"] for c in comparisons])) if comparisons else 0.0,
        "mean_success_gain": float(np.mean([c["p2p_success"] - c["baseline_success"] for c in comparisons])) if comparisons else 0.0,
        "n_better_success": sum(c["better_success"] for c in comparisons),
        "n_edits": len(comparisons),
        "figures": {k: files[k] for k in ("loss_plot", "samples", "eval_examples")},
        "goal_comparisons": [c for c in comparisons if c["edit"] in GOAL_EDIT_TYPES],
        "n_goal_types": sum(c["edit"] in GOAL_EDIT_TYPES for c in comparisons),
        "n_goals": sum(c["goals"]["all"] for c in comparisons if c["edit"] in GOAL_EDIT_TYPES),
        "goal": {"rate": GOAL_RATE, "iou_gain": GOAL_IOU_GAIN, "shift": GOAL_SHIFT_PX, "other": GOAL_OTHER_KEPT},
        "pair_comparisons": pairs,
        "pair_settings": two_object_settings(cfg["eval"]) if pairs else "",
        "n_pair_goals": sum(c["pair_goals"]["all"] for c in pairs),
        "has_reweight": any(c["edit"] == "reweight_big" for c in comparisons),
        "tradeoff": tradeoff_summary(pd.read_csv(files["tradeoff"])) if files.get("tradeoff") else None,
        "tradeoff_png": files.get("tradeoff_png"),
        "tradeoff_cfg": cfg.get("tradeoff"),
        "localisation": localisation_summary(pd.read_csv(files["localisation"])) if files.get("localisation") else None,
        "reweight": reweight_summary(pd.read_csv(files["reweight"])) if files.get("reweight") else None,
        "reweight_png": files.get("reweight_png"),
        "reweight_examples": files.get("reweight_examples"),
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
    ] + ([f"The goals of a working prompt-to-prompt (target reached at least {GOAL_RATE:g}x as often as without control, "
          f"mask IoU at least {GOAL_IOU_GAIN:g} above it, centroid shift at most {GOAL_SHIFT_PX:g} px) are met by "
          f"{ctx['n_goals']} of the {ctx['n_goal_types']} word-swap and refinement edit types"
          + (f" ({', '.join(c['edit'] for c in ctx['goal_comparisons'] if c['goals']['all'])})." if ctx["n_goals"] else ".")]
         if ctx.get("n_goal_types") else [])
      + ([f"With two objects, the object the edit does not name keeps its shape, colour and place (centroid within "
          f"{GOAL_SHIFT_PX:g} px) in " + ", ".join(f"{pct(c['p2p_other'], 3)} of the {c['edit']} seeds (without control: "
                                                   f"{pct(c['baseline_other'], 3)})" for c in ctx["pair_comparisons"])
          + f"; the goal of at least {pct(GOAL_OTHER_KEPT, 3)} with the target reached at least {GOAL_RATE:g}x as often as "
          f"without control is met by {ctx['n_pair_goals']} of the {len(ctx['pair_comparisons'])} two-object edit types."]
         if ctx.get("pair_comparisons") else [])}

