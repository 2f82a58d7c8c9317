"""The report's forward-diffusion section, read from the stage's CSV and PNG files (no torch).
"""

from __future__ import annotations

import pandas as pd


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
