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


def _showcase(path: str | None) -> dict[str, dict[str, dict]]:
    """edit name -> {"p2p": row, "baseline": row} of results/t2i/showcase.csv ({} without it)."""
    import math as _m

    import pandas as pd

    if not path:
        return {}
    out: dict[str, dict[str, dict]] = {}
    for r in pd.read_csv(path, keep_default_na=False, na_values=[""]).to_dict("records"):
        r = {k: (None if isinstance(v, float) and _m.isnan(v) else v) for k, v in r.items()}
        for k in ("measured", "source_ok", "reached", "untouched_kept", "success"):
            if r.get(k) is not None:
                r[k] = str(r[k]).lower() == "true"
        out.setdefault(r["edit"], {})[r["method"]] = r
    return out


MAX_SHIFT_PX = 1.0  # the reader's "in place" (stages.t2i.MAX_SHIFT_PX): the object's centroid moves at most this far


def verdict(v: dict | None) -> dict | None:
    """Sentences for one showcased edit from the reader's verdicts (rows of showcase.csv for p2p
    and the baseline): {status: success | failure | unmeasured, text}. None: no verdict file."""
    from diffusion_report.report.render import fmt, pct

    if not v or "p2p" not in v:
        return None
    p, b = v["p2p"], v.get("baseline") or {}
    if not p.get("measured"):
        return {"status": "unmeasured", "text": f"The attribute reader gives no verdict on this edit: {p.get('cause') or 'no edit type matches it'}."}
    kind = str(p["edit_type"]).replace("_", " ")

    def one(r, who):
        if r.get("success"):
            return (f"{who} succeeds: the target is reached, the untouched attributes are kept and the object "
                    f"moves {fmt(r['centroid_shift_px'], 2)} px (in place: at most {fmt(MAX_SHIFT_PX, 2)} px)")
        return f"{who} fails: {r.get('cause') or 'see the reader'}"

    text = f"Read by the attribute reader ({kind}): {one(p, 'prompt-to-prompt')}."
    if b.get("measured"):
        text += f" {one(b, 'Without control, the edited prompt')}."
    if p.get("eval_n") is not None:
        text += (f" Over the evaluation's {int(p['eval_n'])} seeds of this edit type, prompt-to-prompt reaches the target in "
                 f"{pct(p['eval_success'], 3)} of them and the no-control baseline in {pct(p['eval_success_baseline'], 3)}, "
                 "so this one image shows " + ("a typical" if (p["success"] and p["eval_success"] >= 0.5) or (not p["success"] and p["eval_success"] < 0.5)
                                                else "an untypical") + " outcome (typical: the outcome of most seeds).")
        differ = p.get("settings_differ")
        text += (f" The evaluation's settings differ from this edit's ({differ})." if differ
                 else " The evaluation used this edit's settings.")
    return {"status": "success" if p.get("success") else "failure", "text": text}


def report_context(files: dict[str, str], config: dict) -> dict:
    """Plain data for the report's prompt-to-prompt section (numbers from results/p2p/metrics.csv)."""
    import math as _m

    import pandas as pd

    cfg = config["p2p"]
    df = pd.read_csv(files["metrics"])
    by_name = {r["edit"]: r for r in df.to_dict("records")}
    verdicts = _showcase(files.get("showcase"))
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
            "verdict": verdict(verdicts.get(e["name"])) if verdicts else None,
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
    judged = [e["verdict"] for e in edits if e["verdict"] and e["verdict"]["status"] != "unmeasured"]
    return {
        "showcase": {"judged": len(judged), "succeeded": sum(v["status"] == "success" for v in judged)},
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
    sc = ctx.get("showcase") or {}
    if sc.get("judged"):
        out.append(f"Read by the attribute reader, {sc['succeeded']} of the {sc['judged']} edits it can judge succeed "
                   "(target reached, the rest kept, the object in place); the failures are shown as failures, with their cause.")
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

