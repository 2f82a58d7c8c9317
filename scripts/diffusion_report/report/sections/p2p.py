"""The report's prompt-to-prompt section, read from the stage's CSV and PNG files (no torch).
"""

from __future__ import annotations

from diffusion_report.core.prompts import per_word_steps, split_pair_caption
from diffusion_report.report.sections.t2i import (  # the reader's "in place": the centroid moves at most GOAL_SHIFT_PX
    GOAL_OTHER_KEPT,
    GOAL_SHIFT_PX,
    PAIR_EDIT_TYPES,
    two_object_settings,
)


def _fmt_steps(v) -> str:
    """0.8 -> "80%"; {"default": 0.8, "lion": 0.4} -> "80% (lion: 40%)"."""
    def pct(x):
        return f"{float(x) * 100:.0f}%"

    default, rest = per_word_steps(v)
    return pct(default) + (" (" + ", ".join(f"{k}: {pct(x)}" for k, x in rest.items()) + ")" if rest else "")


def _records(path: str) -> list[dict]:
    """The rows of a CSV, empty cells as None."""
    import math as _m

    import pandas as pd

    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    return [{k: (None if isinstance(v, float) and _m.isnan(v) else v) for k, v in r.items()} for r in df.to_dict("records")]


def _showcase(path: str | None) -> dict[str, dict[str, dict]]:
    """edit name -> {"p2p": row, "baseline": row} of results/t2i/showcase.csv ({} without it)."""
    if not path:
        return {}
    out: dict[str, dict[str, dict]] = {}
    for r in _records(path):
        r.update({k: _bool(r.get(k)) for k in ("measured", "source_ok", "reached", "untouched_kept", "success")})
        out.setdefault(r["edit"], {})[r["method"]] = r
    return out


def _outcome(row: dict, who: str) -> str:
    """"<who> succeeds: ..." or "<who> fails: <cause>" for a row of the attribute reader's verdict."""
    from diffusion_report.report.render import fmt

    if _bool(row.get("success")):
        return (f"{who} succeeds: the target is reached, the untouched attributes are kept and the object "
                f"moves {fmt(row['centroid_shift_px'], 2)} px (in place: at most {fmt(GOAL_SHIFT_PX, 2)} px)")
    return f"{who} fails: {row.get('cause') or 'see the reader'}"


def verdict(v: dict | None) -> dict | None:
    """Sentences for one showcased edit from the reader's verdicts (rows of showcase.csv for p2p
    and the baseline): {status: success | failure | unmeasured, text}. None: no verdict file."""
    from diffusion_report.report.render import pct

    if not v or "p2p" not in v:
        return None
    p, b = v["p2p"], v.get("baseline") or {}
    if not p.get("measured"):
        return {"status": "unmeasured", "text": f"The attribute reader gives no verdict on this edit: {p.get('cause') or 'no edit type matches it'}."}
    kind = str(p["edit_type"]).replace("_", " ")
    text = f"Read by the attribute reader ({kind}): {_outcome(p, 'prompt-to-prompt')}."
    if b.get("measured"):
        text += f" {_outcome(b, 'Without control, the edited prompt')}."
    if p.get("eval_n") is not None:
        text += (f" Over the evaluation's {int(p['eval_n'])} seeds of this edit type, prompt-to-prompt reaches the target in "
                 f"{pct(p['eval_success'], 3)} of them and the no-control baseline in {pct(p['eval_success_baseline'], 3)}, "
                 "so this one image shows " + ("a typical" if (p["success"] and p["eval_success"] >= 0.5) or (not p["success"] and p["eval_success"] < 0.5)
                                                else "an untypical") + " outcome (typical: the outcome of most seeds).")
        differ = p.get("settings_differ")
        text += (f" The evaluation's settings differ from this edit's ({differ})." if differ
                 else " The evaluation used this edit's settings.")
    return {"status": "success" if p.get("success") else "failure", "text": text}


# --------------------------------------------------------------------------- editing given images
NULL_TEXT_GAIN_DB = 5.0  # the goal: null-text inversion reconstructs >= 5 dB PSNR better than DDIM inversion
FAITHFUL_DB = 40.0  # PSNR at which the reconstruction's RMS difference from the input is 1% of the range (2.6 of 255 levels)
METHOD_LABELS = {"ddim_inversion": "DDIM inversion", "null_text_inversion": "null-text inversion"}


def _bool(v) -> bool | None:
    import math as _m

    if v is None or (isinstance(v, float) and _m.isnan(v)):
        return None
    return str(v).lower() == "true"


def gain_sentence(ddim_db: float, null_db: float) -> dict:
    """Whether null-text inversion beats DDIM inversion by at least :data:`NULL_TEXT_GAIN_DB` (PSNR),
    and whether its reconstruction is faithful (at least :data:`FAITHFUL_DB`): {met, gain, text}."""
    from diffusion_report.report.render import fmt

    gain = null_db - ddim_db
    met = gain >= NULL_TEXT_GAIN_DB
    text = (f"Null-text inversion reconstructs the input at {fmt(null_db, 3)} dB PSNR, DDIM inversion alone at "
            f"{fmt(ddim_db, 3)} dB: {fmt(gain, 2)} dB " + ("better" if gain >= 0 else "worse") + ", so the goal of at least "
            f"{fmt(NULL_TEXT_GAIN_DB, 2)} dB is " + ("met" if met else "not met") + ".")
    if null_db >= FAITHFUL_DB:
        text += (f" At {fmt(FAITHFUL_DB, 2)} dB or more, the null-text reconstruction's RMS difference from the input is at most 1% "
                 "of the range (2.6 of 255 grey levels).")
    else:
        text += (f" Below {fmt(FAITHFUL_DB, 2)} dB, the null-text reconstruction's RMS difference from the input is more than 1% "
                 "of the range (2.6 of 255 grey levels).")
    return {"met": met, "gain": gain, "text": text}


def real_edit_verdict(row: dict) -> dict:
    """The reader's verdict on one edit of a given image (a row of its metrics.csv): {status, text}."""
    if not _bool(row.get("measured")):
        return {"status": "unmeasured", "text": f"The attribute reader gives no verdict: {row.get('cause') or 'no edit type matches it'}."}
    kind = str(row.get("edit_type") or "").replace("_", " ")
    return {"status": "success" if _bool(row.get("success")) else "failure",
            "text": f"Read by the attribute reader ({kind}): {_outcome(row, 'the edit')}."}


def real_edits_context(files: dict[str, str], cfg: dict) -> list[dict]:
    """Per configured given image with results: its figure, reconstruction table (PSNR, SSIM, wall
    time), sentences from the numbers and each edit's verdict. Images without results are left out."""
    import pandas as pd

    out = []
    for entry in cfg.get("real_edits") or []:
        name = entry["name"]
        if f"real_{name}_metrics" not in files:
            continue
        rows = _records(files[f"real_{name}_metrics"])
        rec = {r["method"]: r for r in rows if r["kind"] == "reconstruction"}
        timing = {}
        if files.get(f"real_{name}_timing"):
            t = pd.read_csv(files[f"real_{name}_timing"])
            timing = {r["method"]: r for r in t.to_dict("records")}
        table = [{"reconstruction": METHOD_LABELS.get(m, m), "PSNR (dB)": r["psnr"], "SSIM": r["ssim"],
                  "time (s)": timing[m]["seconds"] if m in timing else None} for m, r in rec.items()]
        gain = gain_sentence(rec["ddim_inversion"]["psnr"], rec["null_text_inversion"]["psnr"]) if len(rec) == 2 else None
        t_image = timing.get("null_text_inversion")
        edits = []
        for r in rows:
            if r["kind"] != "edit":
                continue
            conf = next((e for e in entry["edits"] if e["name"] == r["method"]), {})
            edits.append({"name": r["method"], "mode": r["mode"], "target": r["prompt"],
                          "cross_replace_steps": _fmt_steps(conf.get("cross_replace_steps", 0.8)),
                          "self_replace_steps": _fmt_steps(conf.get("self_replace_steps", 0.4)),
                          "verdict": real_edit_verdict(r)})
        image = entry["image"]
        out.append({
            "name": name, "prompt": entry["prompt"], "figure": files.get(f"real_{name}_figure"), "rows": table, "gain": gain,
            "drawn": not isinstance(image, str), "drawing": describe_drawing(image["draw"]) if isinstance(image, dict) else None,
            "file": image if isinstance(image, str) else None,
            "guidance_scale": rows[0]["guidance_scale"], "num_steps": rows[0]["num_steps"],  # as run (every row holds them)
            "null_text": entry["null_text"],  # the schema's defaults filled in
            "seconds": t_image["seconds"] if t_image else None, "threads": t_image["threads"] if t_image else None,
            "device": t_image["device"] if t_image else None, "edits": edits,
        })
    return out


def describe_drawing(draw: dict) -> str:
    """A ``p2p.real_edits`` drawing in words: its object (or its two objects, left and right), each
    with its half-extent and centre, and the background."""
    from diffusion_report.report.render import fmt

    def one(o):
        return f"a {o['colour']} {o['shape']} of half-extent {fmt(o['radius'], 6)} px centred at ({fmt(o['cx'], 6)}, {fmt(o['cy'], 6)})"

    if "objects" in draw:
        left, right = draw["objects"]
        return f"two objects: {one(left)} in the left half and {one(right)} in the right half, on {draw['background']}"
    return f"{one(draw)} on {draw['background']}"


def real_summary(real: list[dict]) -> dict | None:
    """Across the given images: how many meet the gain goal, how many judged edits succeed."""
    if not real:
        return None
    judged = [e["verdict"] for r in real for e in r["edits"] if e["verdict"]["status"] != "unmeasured"]
    gains = [r["gain"] for r in real if r["gain"]]
    return {"n": len(real), "n_met": sum(g["met"] for g in gains), "n_gain": len(gains),
            "min_gain": min((g["gain"] for g in gains), default=None), "max_gain": max((g["gain"] for g in gains), default=None),
            "judged": len(judged), "succeeded": sum(v["status"] == "success" for v in judged)}



RATE_GAP_GOAL = 0.10  # the goal: on inverted drawn images, the rates within 10 points of those on generated images


def real_eval_context(files: dict[str, str], eval_cfg: dict) -> dict | None:
    """The drawn-image evaluation (rule p2p_real_eval): per edit type, prompt-to-prompt's rates on
    inverted drawn images beside t2i_eval's on generated images, the goal (both within
    :data:`RATE_GAP_GOAL`), the reconstruction gain per image against :data:`NULL_TEXT_GAIN_DB`,
    the time per image, and sentences from those numbers; ``eval_cfg`` (t2i.eval) gives the
    settings both use. None without its files."""
    import pandas as pd
    from markupsafe import Markup

    from diffusion_report.report.render import fmt, pct

    if not files.get("real_eval_summary"):
        return None
    summary = {(r["edit"], r["method"]): r for r in _records(files["real_eval_summary"])}
    per = pd.read_csv(files["real_eval_per_image"])
    images = per[per["method"] == "p2p"]  # one row per image (the reconstructions do not depend on the method)
    gains = images["psnr_null_text"] - images["psnr_ddim"]
    timing = pd.read_csv(files["real_eval_timing"]) if files.get("real_eval_timing") else None
    rows, types = [], []
    for edit in dict.fromkeys(k[0] for k in summary):
        p, b = summary[(edit, "p2p")], summary.get((edit, "baseline")) or {}
        has_gen = p.get("generated_n") is not None
        gap_s = p["success"] - p["generated_success"] if has_gen else None
        gap_k = p["all_kept"] - p["generated_all_kept"] if has_gen else None
        within = has_gen and abs(gap_s) <= RATE_GAP_GOAL + 1e-9 and abs(gap_k) <= RATE_GAP_GOAL + 1e-9
        rows.append({"edit type": edit, "images": int(p["n"]), "reached, drawn": p["success"],
                     "reached, generated": p["generated_success"] if has_gen else None,
                     "kept, drawn": p["all_kept"], "kept, generated": p["generated_all_kept"] if has_gen else None,
                     "no control: reached, kept": f"{fmt(b['success'], 2)}, {fmt(b['all_kept'], 2)}" if b else "",
                     f"within {fmt(RATE_GAP_GOAL * 100, 2)} points": ("yes" if within else "no") if has_gen else "not evaluated"})
        if any(k[0].startswith("pair_") for k in summary):  # two objects: the one the edit does not name, kept (part of "kept")
            other = p.get("other_kept")
            rows[-1]["other object kept, drawn"] = other if edit.startswith("pair_") and other is not None else ""
        if has_gen:
            types.append({"split": shared_word_split(per, edit) if edit.startswith("pair_") else None,
                          "edit": edit.replace("_", " "), "within": within, "drawn_s": p["success"], "gen_s": p["generated_success"],
                          "drawn_k": p["all_kept"], "gen_k": p["generated_all_kept"], "free_s": b.get("success")})
    n_img = len(images)
    met = int((gains >= NULL_TEXT_GAIN_DB).sum())
    text = [f"Over {n_img} drawn images, null-text inversion reconstructs the input at {fmt(images['psnr_null_text'].mean(), 3)} dB "
            f"PSNR on average, DDIM inversion alone at {fmt(images['psnr_ddim'].mean(), 3)} dB; the gain is at least "
            f"{fmt(NULL_TEXT_GAIN_DB, 2)} dB (the goal) in {met} of {n_img} images (smallest gain {fmt(gains.min(), 3)} dB)."]
    if types:
        ok = [t for t in types if t["within"]]
        text.append(f"The goal, prompt-to-prompt's rates on inverted drawn images within {fmt(RATE_GAP_GOAL * 100, 2)} points of "
                    f"its rates on generated images for both the target reached and the untouched attributes kept, is met for "
                    f"{len(ok)} of {len(types)} edit types.")
        for t in types:
            text.append(f"{t['edit'].capitalize()}: the target is reached in {pct(t['drawn_s'], 3)} of the drawn images and "
                        f"{pct(t['gen_s'], 3)} of the generated ones, the untouched attributes are kept in {pct(t['drawn_k'], 3)} "
                        f"and {pct(t['gen_k'], 3)} ({_goal_side(t)}).")
            if not t["within"] and t["drawn_s"] < t["gen_s"] and t["free_s"] is not None:
                # where the target falls short: does the inverted x_T allow it without control?
                text.append(Markup("Without control, the target prompt sampled from the same inverted x<sub>T</sub> reaches the target in "
                                   "{} of the drawn images, so {}").format(
                    pct(t["free_s"], 3),
                    "the inversion leaves room for the edit and the shortfall comes with the injected attention, which holds the drawn "
                    "layout more firmly than a generated one." if t["free_s"] >= t["gen_s"] else
                    Markup("the inverted x<sub>T</sub> and null-text embeddings themselves hold the image to the input.")))
            sp = t["split"]
            if sp and sp["shared"][0] and sp["rest"][0] and 1 - sp["lost"] / sp["n"] < GOAL_OTHER_KEPT:
                # where the other object is lost, when it is lost too often: counts by the edited word, not a causal measurement
                text.append(f"{t['edit'].capitalize()} loses the other object in {sp['lost']} of {sp['n']} drawn images, {sp['lost_shared']} of "
                            f"them images where the edited word, before or after the edit, also names the other object (a count, not a "
                            f"measured cause): there the other object is kept in {pct(sp['shared'][1] / sp['shared'][0], 3)} of "
                            f"{sp['shared'][0]} images, elsewhere in {pct(sp['rest'][1] / sp['rest'][0], 3)} of {sp['rest'][0]}.")
    per_image = None
    if timing is not None and len(timing):
        per_image = {"seconds": float((timing["null_text_inversion_s"] + timing["edit_s"]).sum() / timing["n"].sum()),
                     "threads": int(timing["threads"].iloc[0]), "device": str(timing["device"].iloc[0])}
    return {"rows": rows, "text": text, "n_images": n_img, "n_types": len(rows), "per_image": per_image,
            "examples": files.get("real_eval_examples"), "gain_met": met, "rate_goal": RATE_GAP_GOAL, "settings": {
                "num_steps": eval_cfg.get("num_steps"), "guidance_scale": eval_cfg.get("guidance_scale"),
                "cross_replace_steps": _fmt_steps(eval_cfg.get("cross_replace_steps", 0.8)) + (
                    "" if eval_cfg.get("edited_word_cross_replace_steps") is None
                    else f" (the swapped-in word's: {_fmt_steps(eval_cfg['edited_word_cross_replace_steps'])})"),
                "self_replace_steps": _fmt_steps(eval_cfg.get("self_replace_steps", 0.4)),
                "two_object": two_object_settings(eval_cfg) if any(t in PAIR_EDIT_TYPES for t in per["edit"].unique()) else ""},
            "types_met": sum(t["within"] for t in types), "types_compared": len(types)}


def pair_edit_words(source: str, target: str) -> tuple[str, str, str] | None:
    """(old, new, other) of an edit between two-object captions ("a red circle and a blue square on a
    white background", the generator's form): the edited object's word before and after the edit,
    and the other object's word for the same attribute. None unless the prompts are two such
    captions that differ in one colour or shape word."""
    s, t = split_pair_caption(source), split_pair_caption(target)
    if s is None or t is None or s[1] != t[1]:
        return None
    changed = [(i, k) for i in range(2) for k in range(2) if s[0][i][k] != t[0][i][k]]
    if len(changed) != 1:
        return None
    (i, k), = changed  # object i (0 left, 1 right), attribute k (0 colour, 1 shape)
    return s[0][i][k], t[0][i][k], s[0][1 - i][k]


def shared_word_split(per_image, edit: str) -> dict | None:
    """Prompt-to-prompt's "other object kept" on the drawn images of one two-object edit type, split
    by whether the edited word, before or after the edit, also names the other object ("a red
    square and a red circle" -> "a red square and a green circle"): {shared: (images, kept),
    rest: (images, kept), n: images, lost: images losing the other object, lost_shared: those among
    the shared}. None without such rows."""
    rows = per_image[(per_image["edit"] == edit) & (per_image["method"] == "p2p")]
    if "other_kept" not in rows or not len(rows):
        return None
    words = [pair_edit_words(s, t) for s, t in zip(rows["source"], rows["target"])]
    shared = [w is not None and w[2] in (w[0], w[1]) for w in words]
    kept = [bool(k == 1) for k in rows["other_kept"]]
    n_shared, k_shared = sum(shared), sum(k for k, sh in zip(kept, shared) if sh)
    n_rest, k_rest = len(kept) - n_shared, sum(k for k, sh in zip(kept, shared) if not sh)
    return {"shared": (n_shared, k_shared), "rest": (n_rest, k_rest), "n": len(kept), "lost": len(kept) - sum(kept),
            "lost_shared": n_shared - k_shared}


def _goal_side(t: dict) -> str:
    """Where one edit type stands against the rate goal: within it, or outside it and on which side
    (the rates that miss it higher or lower on the drawn images than on the generated ones)."""
    if t["within"]:
        return "within the goal"
    gaps = [d - g for d, g in ((t["drawn_s"], t["gen_s"]), (t["drawn_k"], t["gen_k"])) if abs(d - g) > RATE_GAP_GOAL + 1e-9]
    if gaps and all(g > 0 for g in gaps):
        return "outside the goal, higher on the drawn images"
    if gaps and all(g < 0 for g in gaps):
        return "outside the goal, lower on the drawn images"
    return "outside the goal"


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
    real = real_edits_context(files, cfg)
    return {
        "real": real, "real_summary": real_summary(real), "real_gain_goal": NULL_TEXT_GAIN_DB,
        "real_eval": real_eval_context(files, config.get("t2i", {}).get("eval", {})) if cfg["model"]["source"] == "train" else None,
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
        "self_max_tokens": cfg.get("self_max_tokens"),
        "blend": blend_summary(df.to_dict("records")),
    }


FULL_MASK = 0.999  # a mask covering this fraction of the image leaves no outside to compare
BLEND_MAX_MAE = 0.02  # the goal: with local blend, the pixels outside the mask stay within 0.02 of the source's


def blend_summary(rows: list[dict]) -> dict:
    """The local-blend goal over the metric rows: edits blended with a mask that leaves an outside,
    how many keep it within :data:`BLEND_MAX_MAE` of the source (mean absolute difference on [0, 1]),
    and how many blended edits had a mask covering the whole image (nothing to keep)."""
    import math as _m

    blended = [r for r in rows if r["mask"] == "local_blend"]
    judged = [r for r in blended if r["mask_fraction"] < FULL_MASK and not _m.isnan(r["edit_mae_outside"])]
    return {"n": len(blended), "judged": len(judged), "full": len(blended) - len(judged), "goal": BLEND_MAX_MAE,
            "met": sum(r["edit_mae_outside"] <= BLEND_MAX_MAE for r in judged),
            "worst": max((r["edit_mae_outside"] for r in judged), default=None),
            "names": [r["edit"] for r in judged]}


def answer(ctx: dict, config: dict) -> dict:
    """Exercise 5 at a glance (the configured edits): how many keep what they should not change."""
    from diffusion_report.report.render import fmt

    model = ctx["model"]
    out = [f"{ctx['n_edits']} edit{'s' if ctx['n_edits'] != 1 else ''} by attention control on {model}."]
    sc = ctx.get("showcase") or {}
    if sc.get("judged"):
        out.append(f"Read by the attribute reader, {sc['succeeded']} of the {sc['judged']} edits it can judge succeed "
                   "(target reached, the rest kept, the object in place)"
                   + ("; the failures are shown as failures, with their cause." if sc["succeeded"] < sc["judged"] else "."))
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
    rs = ctx.get("real_summary")
    if rs and rs["n_gain"]:
        out.append(f"Editing given images: null-text inversion reconstructs {rs['n_met']} of {rs['n_gain']} images at least "
                   f"{fmt(NULL_TEXT_GAIN_DB, 2)} dB (PSNR) better than DDIM inversion alone (gains {fmt(rs['min_gain'], 2)} to "
                   f"{fmt(rs['max_gain'], 2)} dB)" + (f"; {rs['succeeded']} of their {rs['judged']} edits succeed by the attribute reader."
                                                      if rs["judged"] else "."))
    ev = ctx.get("real_eval")
    if ev and ev["types_compared"]:
        out.append(f"Over {ev['n_images']} drawn images, inverted and then edited, prompt-to-prompt's rates (target reached, "
                   f"untouched attributes kept) are within {fmt(RATE_GAP_GOAL * 100, 2)} points of its rates on generated images "
                   f"for {ev['types_met']} of {ev['types_compared']} edit types.")
    return {"exercises": "5", "sentences": out}

