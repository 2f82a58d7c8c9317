"""The report's theory section: the rendered fragment, its reference list and the checks table (no torch).

The checks (:mod:`diffusion_report.stages.theory`, ``checks.csv``) name their identities in ASCII
(``sqrt(abar_t)``); the table typesets them like the derivation: :data:`IDENTITY_TEX` writes each
name as text with TeX math, drawn by :func:`diffusion_report.report.latex.inline_tex`.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pandas as pd
from markupsafe import Markup, escape

from diffusion_report.report.latex import equation_numbers, inline_tex

log = logging.getLogger(__name__)

_NUM = r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?"
_ETA_ONE = r"DDIM $\eta = 1$, $t' = t - 1$:"
_FLOOR = r"$t' = \lfloor t/2 \rfloor$"
_DIFF = r"(max $\lvert \mathrm{diff} \rvert$)"

# (the ASCII name of checks.csv as a regular expression, the same in text with $TeX$): the notation of
# report/theory.tex. <group> in the second inserts that named group of the first (a number or plain text).
IDENTITY_TEX: list[tuple[str, str]] = [
    (r"chain x0 coefficient = sqrt\(abar_t\)", r"chain's $x_0$ coefficient $= \sqrt{\bar\alpha_t}$"),
    (r"sum of noise variances = 1 - abar_t", r"sum of noise variances $\sum_s c_{t,s}^2 = 1 - \bar\alpha_t$"),
    (r"posterior mean: x0 form = noise form \(max \|diff\|\)", r"posterior mean: $x_0$ form = noise form " + _DIFF),
    (r"KL term: \|mu_tilde - mu_theta\|\^2 = weight \|eps - eps_theta\|\^2",
     r"KL term: $\lVert \tilde\mu_t - \mu_\theta \rVert^2$ = weight $\times \lVert \bar\varepsilon - \varepsilon_\theta \rVert^2$"),
    (r"posterior variance = Gaussian conditioning", r"posterior variance $\tilde\beta_t$ = Gaussian conditioning"),
    (r"Var\[summed noise\] = 1 - abar_t", r"summed noise: $\mathrm{Var}[n_t] = 1 - \bar\alpha_t$"),
    (r"E\[x_t \| x_0\]: chain = sqrt\(abar_t\) x_0", r"$\mathbb{E}[x_t \mid x_0]$: chain $= \sqrt{\bar\alpha_t}\, x_0$"),
    (r"Var\[x_t \| x_0\]: chain = 1 - abar_t", r"$\mathrm{Var}[x_t \mid x_0]$: chain $= 1 - \bar\alpha_t$"),
    (r"posterior: x_t coefficient \(regression slope\)", r"posterior: $x_t$ coefficient (regression slope)"),
    (r"posterior: variance beta_tilde_t \(residual variance\)", r"posterior: variance $\tilde\beta_t$ (residual variance)"),
    (r"E\[MSE\(x_t, x_0\)\]: (?P<rest>[^$`]+)", r"$\mathbb{E}[\mathrm{MSE}(x_t, x_0)]$: <rest>"),
    (r"DDIM eta = 1, t' = t - 1: (?P<x>x_t|x_0) coefficient = posterior's", _ETA_ONE + r" $<x>$ coefficient = posterior's"),
    (r"DDIM eta = 1, t' = t - 1: sigma_t\^2 = beta_tilde_t", _ETA_ONE + r" $\sigma_t^2 = \tilde\beta_t$"),
    (rf"DDIM step \(eta = (?P<eta>{_NUM}), t' = floor\(t/2\)\): report's ddim_step = update \(max \|diff\|\)",
     r"DDIM step ($\eta = <eta>$, " + _FLOOR + r"): the report's `ddim_step` = update " + _DIFF),
    (rf"DDIM q_sigma, eta = (?P<eta>{_NUM}): E\[x_t' \| x_0\] = sqrt\(abar_t'\) x_0, t' = floor\(t/2\)",
     r"DDIM $q_\sigma$, $\eta = <eta>$: $\mathbb{E}[x_{t'} \mid x_0] = \sqrt{\bar\alpha_{t'}}\, x_0$, " + _FLOOR),
    (rf"DDIM q_sigma, eta = (?P<eta>{_NUM}): Var\[x_t' \| x_0\] = 1 - abar_t', t' = floor\(t/2\)",
     r"DDIM $q_\sigma$, $\eta = <eta>$: $\mathrm{Var}[x_{t'} \mid x_0] = 1 - \bar\alpha_{t'}$, " + _FLOOR),
]


def identity_tex(name: str) -> str | None:
    """The name of a check written with TeX math (:data:`IDENTITY_TEX`), or None for a name it does not know."""
    for pattern, tex in IDENTITY_TEX:
        m = re.fullmatch(pattern, name)
        if m:
            return re.sub(r"<(\w+)>", lambda g: m.group(g.group(1)), tex)
    return None


def identity_markup(name: str) -> Markup:
    """A check's name for the table, typeset like the derivation (math as SVG with its TeX as text
    alternative); a name :data:`IDENTITY_TEX` does not know is shown as it is, and logged."""
    tex = identity_tex(name)
    if tex is None:
        log.warning("no typeset form of the theory check %r (add it to IDENTITY_TEX): shown in ASCII", name)
        return escape(name)
    return Markup(inline_tex(tex))


def summarise(df: pd.DataFrame) -> list[dict]:
    """One row per identity: equation, method, timesteps, worst relative error, worst error/tolerance.
    The identity is markup (:func:`identity_markup`)."""
    rows = []
    for (identity, equation, method), g in df.groupby(["identity", "equation", "method"], sort=False):
        ratio = (g["abs_error"] / g["tolerance"]).max()
        rows.append({"identity": identity_markup(identity), "equation": equation, "method": method,
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
