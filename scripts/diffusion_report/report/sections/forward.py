"""The report's forward-diffusion section, read from the stage's CSV and PNG files (no torch).
"""

from __future__ import annotations

import pandas as pd

from diffusion_report.report.render import fmt, pct


def image_columns(df: pd.DataFrame) -> list[str]:
    """The per-image measured columns of an MSE table (t, mean and expected_* are not images)."""
    return [c for c in df.columns if c not in ("t", "mean") and not c.startswith("expected_")]


def report_context(files: dict[str, str], config: dict) -> dict:
    """Numbers and figures for the report's forward-diffusion section."""
    df = pd.read_csv(files["mse"])
    names = image_columns(df)
    fcfg = config["forward"]
    shown = [t for t in fcfg["show_timesteps"] if t <= int(df["t"].max())]
    rows = []
    for t in shown:
        r = df[df["t"] == t].iloc[0]
        row = {"t": t}
        row.update({n: float(r[n]) for n in names})
        row["mean"] = float(r["mean"])
        row["expected mean"] = float(r["expected_mean"])
        rows.append(row)
    later = df[df["t"] >= 10]
    rel = (later["mean"] - later["expected_mean"]).abs() / later["expected_mean"]
    last = df.iloc[-1]
    return {
        "names": names,
        "rows": rows,
        "t_max": int(last["t"]),
        "mse_last": float(last["mean"]),
        "expected_last": float(last["expected_mean"]),
        "rel_last": float(abs(last["mean"] - last["expected_mean"]) / last["expected_mean"]),
        "max_rel_dev": float(rel.max()) if len(rel) else 0.0,
        "schedule": config["schedule"],
        "image_size": fcfg["image_size"],
        "figures": {k: files[k] for k in ("clean", "grid", "mse_shown", "mse_curve")},
    }


AGREE_REL = 0.05  # the measured MSE "follows" its closed-form expectation when within 5% for t >= 10


def answer(ctx: dict, config: dict) -> dict:
    """Exercise 3 at a glance: how fast the images are destroyed, and whether the MSE follows its expectation."""
    first = next((r for r in ctx["rows"] if r["t"] > 0), None)
    rise = (f"the mean MSE to the clean images is {fmt(first['mean'], 3)} at t = {first['t']} and "
            if first and first["t"] < ctx["t_max"] else "the mean MSE to the clean images is ")
    follows = ctx["max_rel_dev"] <= AGREE_REL
    return {"exercises": "3", "sentences": [
        f"{len(ctx['names'])} images of {ctx['image_size']}\u00d7{ctx['image_size']} pixels are noised under the "
        f"{ctx['schedule']['kind']} schedule; {rise}{fmt(ctx['mse_last'], 3)} at t = {ctx['t_max']} "
        f"(closed form: {fmt(ctx['expected_last'], 3)}).",
        (f"For t \u2265 10 the measured MSE stays within {pct(ctx['max_rel_dev'], 2)} of its closed-form expectation "
         f"(threshold {pct(AGREE_REL, 0)})." if follows else
         f"For t \u2265 10 the measured MSE deviates from its closed-form expectation by up to {pct(ctx['max_rel_dev'], 2)}, "
         f"more than the {pct(AGREE_REL, 0)} threshold: too few images or pixels for the average to settle."),
    ]}

