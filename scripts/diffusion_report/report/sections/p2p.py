"""The report's prompt-to-prompt section, read from the stage's CSV and PNG files (no torch).
"""

from __future__ import annotations


def _fmt_steps(v) -> str:
    """0.8 -> "80%"; {"default": 0.8, "lion": 0.4} -> "80% (lion: 40%)"."""
    def pct(x):
        return f"{float(x) * 100:.0f}%"

    if isinstance(v, dict):
        rest = {k: x for k, x in v.items() if k not in ("default", "default_")}
        head = pct(v.get("default", v.get("default_", 1.0)))
        return head + (" (" + ", ".join(f"{k}: {pct(x)}" for k, x in rest.items()) + ")" if rest else "")
    return pct(v)


def report_context(files: dict[str, str], config: dict) -> dict:
    """Plain data for the report's prompt-to-prompt section (numbers from results/p2p/metrics.csv)."""
    import math as _m

    import pandas as pd

    cfg = config["p2p"]
    df = pd.read_csv(files["metrics"])
    by_name = {r["edit"]: r for r in df.to_dict("records")}
    edits = []
    for e in cfg["edits"]:
        rw = e.get("reweight")
        edits.append({
            "name": e["name"], "mode": e["mode"], "source": e["source"], "target": e["target"],
            "cross_replace_steps": _fmt_steps(e.get("cross_replace_steps", 0.8)),
            "self_replace_steps": _fmt_steps(e.get("self_replace_steps", 0.4)),
            "reweight": f"{', '.join(rw['words'])} x {rw['scale']}" if rw else "",
            "blend_words": ", ".join(e.get("blend_words") or []),
            "figure": files.get(f"{e['name']}_figure"), "attention": files.get(f"{e['name']}_attention"),
            "metrics": by_name.get(e["name"]),
        })
    rows = [{
        "edit": r["edit"], "mode": r["mode"], "mask": r["mask"], "mask fraction": r["mask_fraction"],
        "|src-edit|": r["edit_mae"], "|src-baseline|": r["baseline_mae"],
        "|src-edit| outside": r["edit_mae_outside"], "|src-baseline| outside": r["baseline_mae_outside"],
    } for r in df.to_dict("records")]
    valid = [r for r in df.to_dict("records") if not _m.isnan(r["edit_mae_outside"]) and not _m.isnan(r["baseline_mae_outside"])]
    closer = sum(r["edit_mae_outside"] < r["baseline_mae_outside"] for r in valid)
    ratios = [r["edit_mae_outside"] / r["baseline_mae_outside"] for r in valid if r["baseline_mae_outside"] > 0]
    model = cfg["model"]
    # over the whole image, for the edits whose prompt changes (a reweight of the same prompt has an
    # identical no-control baseline, so it cannot be compared)
    prompt_changes = {e["name"]: e["source"] != e["target"] for e in cfg["edits"]}
    new_prompt = [r for r in df.to_dict("records") if prompt_changes.get(r["edit"])]
    whole = {
        "n": len(new_prompt),
        "closer": sum(r["edit_mae"] < r["baseline_mae"] for r in new_prompt),
        "edit_mean": float(pd.Series([r["edit_mae"] for r in new_prompt]).mean()) if new_prompt else None,
        "baseline_mean": float(pd.Series([r["baseline_mae"] for r in new_prompt]).mean()) if new_prompt else None,
    }
    fractions = [float(r["mask_fraction"]) for r in df.to_dict("records")]
    return {
        "whole": whole,
        "mask_min": min(fractions) if fractions else None,
        "mask_max": max(fractions) if fractions else None,
        "edits": edits, "rows": rows, "n_edits": len(edits), "n_compared": len(valid), "n_closer": closer,
        "median_ratio": float(pd.Series(ratios).median()) if ratios else None,
        "model": "the embedded text-to-image model trained by this workflow" if model["source"] == "train" else model["pretrained"],
        "pretrained": model["source"] != "train",
        "scheduler": cfg.get("scheduler", "ddim").upper(), "num_inference_steps": cfg["num_inference_steps"],
        "guidance_scale": cfg["guidance_scale"], "mask_threshold": cfg.get("mask_threshold", 0.3),
    }


FULL_MASK = 0.999  # a mask covering this fraction of the image leaves no outside to compare


def answer(ctx: dict, config: dict) -> dict:
    """Exercise 5 at a glance (the configured edits): how many keep what they should not change."""
    from diffusion_report.report.render import fmt

    model = ctx["model"]
    out = [f"{ctx['n_edits']} edit{'s' if ctx['n_edits'] != 1 else ''} by attention control on {model}."]
    if ctx["n_compared"]:
        out.append(f"Outside the edited region, {ctx['n_closer']} of {ctx['n_compared']} edited images stay closer to the "
                   "source than the same prompt sampled without control"
                   + (f" (median ratio of their differences {fmt(ctx['median_ratio'], 3)}; below 1 is closer)."
                      if ctx["median_ratio"] is not None else "."))
    else:
        full = sum(r["mask fraction"] >= FULL_MASK for r in ctx["rows"])
        kinds = " or ".join(sorted({str(r["mask"]).replace("_", " ") for r in ctx["rows"]}))
        out.append(f"Preservation outside the edited region is not measured here: in {full} of {ctx['n_edits']} edits the "
                   f"region's mask ({kinds}; attention thresholded at {fmt(ctx['mask_threshold'], 3)} of its maximum) covers "
                   f"at least {fmt(FULL_MASK * 100, 3)}% of the image, leaving nothing outside to compare. The ground-truth "
                   "evaluation measures preservation instead.")
    return {"exercises": "5", "sentences": out}

