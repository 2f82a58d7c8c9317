"""The report's theory section: the rendered fragment, its reference list and the checks table (no torch).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from diffusion_report.report.latex import equation_numbers


def summarise(df: pd.DataFrame) -> list[dict]:
    """One row per identity: equation, method, timesteps, worst relative error, worst error/tolerance."""
    rows = []
    for (identity, equation, method), g in df.groupby(["identity", "equation", "method"], sort=False):
        ratio = (g["abs_error"] / g["tolerance"]).max()
        rows.append({"identity": identity, "equation": equation, "method": method,
                     "t checked": ", ".join(str(int(t)) for t in g["t"]),
                     "max |error|": float(g["abs_error"].max()),
                     "max error / tolerance": float(ratio),
                     "passed": "yes" if bool(g["passed"].all()) else "NO"})
    return rows


def report_context(files: dict[str, str], config: dict) -> dict:
    """Plain data for report/templates/sections/theory.html.j2.

    files: {"html": theory.html fragment, "refs": its reference list (references.html), "checks": checks.csv,
    "params": what the checks ran with}. The reference list is returned as ``references``: the report
    prints it as its own last section (:func:`diffusion_report.report.render.report_html`).
    """
    fragment = Path(files["html"]).read_text(encoding="utf-8")
    references = Path(files["refs"]).read_text(encoding="utf-8")
    df = pd.read_csv(files["checks"])
    params = json.loads(Path(files["params"]).read_text(encoding="utf-8"))
    numbers = equation_numbers(fragment)
    summary = summarise(df)
    for row in summary:  # "eq:marginal" -> "(6)" as the report reader sees it
        row["equation"] = numbers.get(re.sub(r"[^A-Za-z0-9_-]+", "-", row["equation"]), row["equation"])
    exact = df[df["method"].str.startswith("exact")]
    mc = df[df["method"].str.startswith("Monte Carlo")]
    return {
        "html": fragment,
        "references": references,
        "summary_rows": summary,
        "rows": df.to_dict(orient="records"),
        "n_checks": int(len(df)),
        "n_passed": int(df["passed"].sum()),
        "n_identities": len(summary),
        "timesteps": sorted(int(t) for t in df["t"].unique()),
        "mc_samples": int(params["mc_samples"]),
        "ddim_etas": [f"{eta:g}" for eta in params["ddim_etas"]],
        "z_score": float(params["z_score"]),
        "exact_ulps": int(params["exact_ulps"]),
        "max_exact_error": float(exact["abs_error"].max()) if len(exact) else 0.0,
        "max_mc_ratio": float((mc["abs_error"] / mc["tolerance"]).max()) if len(mc) else 0.0,
        "forward_checked": bool(df["method"].str.startswith("forward").any()),
        "checked_equations": sorted({r["equation"] for r in summary}, key=lambda e: (len(e), e)),
        "schedule": params["schedule"],
        "alpha_bar_T": float(params["alpha_bar_T"]),
        "eq": {k: v for k, v in numbers.items() if k in ANSWER_EQUATIONS},
    }


# The equations the answers point to (anchor labels of report/theory.tex).
ANSWER_EQUATIONS = ("eq-closed-form", "eq-unrolled", "eq-mu-theta", "eq-loss-simple", "eq-cosine")


def answer(ctx: dict, config: dict) -> dict:
    """Exercises 1-2 at a glance: where each answer is, and whether this run's checks of it pass."""
    eq = ctx["eq"]

    def ref(label):
        return f"eq. {eq[label]}" if label in eq else "in the theory section"

    passed = ctx["n_passed"] == ctx["n_checks"]
    return {"exercises": "1-2", "sentences": [
        f"The forward process in one step is {ref('eq-closed-form')}, derived by unrolling the chain ({ref('eq-unrolled')}).",
        f"The reverse-process mean in terms of the predicted noise is {ref('eq-mu-theta')}, the training loss "
        f"{ref('eq-loss-simple')}, and the proposed modification, the cosine schedule with learned variances, {ref('eq-cosine')}.",
        (f"All {ctx['n_checks']} numerical checks of {ctx['n_identities']} identities pass" if passed else
         f"Only {ctx['n_passed']} of {ctx['n_checks']} numerical checks of {ctx['n_identities']} identities pass (see the checks table)")
        + f" on this run's {ctx['schedule']['kind']} schedule (T = {ctx['schedule']['T']}).",
    ]}
