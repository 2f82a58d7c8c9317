"""Tests of the theory section: numerical checks of the derivation and its rendering to HTML/PDF."""

from __future__ import annotations

import html as htmllib
import json
import re
import shutil
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from diffusion_report.core import forward
from diffusion_report.core.schedules import Schedule
from diffusion_report.io import make_generator
from diffusion_report.report import latex
from diffusion_report.report.sections import theory as theory_section
from diffusion_report.stages import theory

ROOT = Path(__file__).resolve().parents[1]
TEX = ROOT / "report" / "theory.tex"
BIB = ROOT / "report" / "references.bib"
TS = [1, 10, 100, 1000]


@pytest.fixture(scope="module")
def config():
    return yaml.safe_load((ROOT / "config.yaml").read_text())


@pytest.fixture(scope="module")
def schedule():
    return Schedule.make("linear", 1000)


def off_by_one(s: Schedule) -> Schedule:
    """A wrong schedule: alpha_bar_t computed as prod_{i<t} alpha_i (misses one factor)."""
    ab = torch.cat([s.alpha_bars.new_ones(1), s.alpha_bars[:-1]])
    return Schedule(betas=s.betas, alphas=s.alphas, alpha_bars=ab)


def not_cumulative(s: Schedule) -> Schedule:
    """A wrong schedule: alpha_bar_t = alpha_t (the sheet's alpha_t read as 1 - beta_t)."""
    return Schedule(betas=s.betas, alphas=s.alphas, alpha_bars=s.alphas.clone())


def rows(checks) -> pd.DataFrame:
    return pd.DataFrame([c.row() for c in checks], columns=theory.COLUMNS)


# ------------------------------------------------------------------------------------------
# Closed forms
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "cosine", "quadratic"])
def test_unrolled_noise_variance_is_one_minus_alpha_bar(kind):
    s = Schedule.make(kind, 300)
    for t in (1, 2, 50, 300):
        c = theory.unrolled_noise_coefficients(s, t)
        assert c.shape == (t,)
        assert torch.isclose((c**2).sum(), 1 - s.alpha_bars[t], rtol=1e-12, atol=0)
    # the last coefficient is sqrt(beta_t) (empty product), the first carries every later alpha
    c = theory.unrolled_noise_coefficients(s, 10)
    assert torch.isclose(c[-1], s.betas[10].sqrt())
    assert torch.isclose(c[0], (s.betas[1] * s.alphas[2:11].prod()).sqrt())


def test_unrolled_coefficients_reproduce_the_chain(schedule):
    """Running the chain with known noise equals sqrt(abar_t) x0 + sum_s c_{t,s} eps_s (eq:unrolled)."""
    g = make_generator(0, "test/unrolled")
    t = 37
    eps = torch.randn(t, 5, generator=g, dtype=torch.float64)
    x0 = torch.linspace(-1, 1, 5, dtype=torch.float64)
    x = x0
    for s in range(1, t + 1):
        x = forward.q_step(x, s, eps[s - 1], schedule)
    c = theory.unrolled_noise_coefficients(schedule, t)
    closed = schedule.alpha_bars[t].sqrt() * x0 + (c[:, None] * eps).sum(0)
    assert torch.allclose(x, closed, rtol=0, atol=1e-13)


def test_posterior_mean_forms_agree_and_differ_for_wrong_noise(schedule):
    g = make_generator(0, "test/posterior")
    x0 = torch.rand(100, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(100, generator=g, dtype=torch.float64)
    for t in (1, 2, 500, 1000):
        ab = schedule.alpha_bars[t]
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        a = forward.posterior_mean_x0(x_t, x0, t, schedule)
        b = forward.posterior_mean_eps(x_t, eps, t, schedule)
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
        assert not torch.allclose(a, forward.posterior_mean_eps(x_t, eps + 0.1, t, schedule), atol=1e-6)
    # t = 1: the posterior is the point mass at x_0
    x_1 = schedule.alpha_bars[1].sqrt() * x0 + (1 - schedule.alpha_bars[1]).sqrt() * eps
    assert torch.allclose(forward.posterior_mean_x0(x_1, x0, 1, schedule), x0, atol=1e-12)


def test_posterior_variance_by_conditioning_matches_schedule(schedule):
    bt = schedule.posterior_variance()
    for t in (1, 2, 10, 999, 1000):
        assert torch.isclose(theory.posterior_variance_by_conditioning(schedule, t), bt[t], rtol=1e-12, atol=1e-15)
    assert bt[1] == 0
    assert 0 < bt[500] < schedule.betas[500]  # beta_tilde_t < beta_t for t >= 2


# ------------------------------------------------------------------------------------------
# One unit test per check, each also fed a wrong schedule that it must reject
# ------------------------------------------------------------------------------------------


def test_exact_checks_pass_and_reject_wrong_schedules(schedule):
    df = rows(theory.exact_checks(schedule, TS, make_generator(0, "x")))
    assert len(df) == 5 * len(TS) and df["passed"].all(), theory.failures(df)
    for wrong in (off_by_one(schedule), not_cumulative(schedule)):
        bad = rows(theory.exact_checks(wrong, TS, make_generator(0, "x")))
        for identity in ("chain x0 coefficient = sqrt(abar_t)", "sum of noise variances = 1 - abar_t",
                         "posterior mean: x0 form = noise form (max |diff|)",
                         "KL term: |mu_tilde - mu_theta|^2 = weight |eps - eps_theta|^2"):
            sub = bad[bad["identity"] == identity]
            assert not sub[sub["t"] >= 10]["passed"].any(), identity


def test_monte_carlo_checks_pass_and_reject_off_by_one(schedule):
    n = 4000
    df = rows(theory.monte_carlo_checks(schedule, TS, n, make_generator(0, "mc")))
    assert df["passed"].all(), theory.failures(df)
    assert (df["method"] == f"Monte Carlo (n={n})").all()
    # the tolerance is Z_SCORE standard errors, not a loose constant: the mean check at t = 100
    row = df[(df["identity"].str.startswith("E[x_t")) & (df["t"] == 100)].iloc[0]
    assert row["tolerance"] == pytest.approx(theory.Z_SCORE * (1 - float(schedule.alpha_bars[100])) ** 0.5 / n**0.5, rel=1e-6)
    bad = rows(theory.monte_carlo_checks(off_by_one(schedule), TS, n, make_generator(0, "mc")))
    failed = set(bad.loc[~bad["passed"], "identity"])
    assert {"Var[summed noise] = 1 - abar_t", "Var[x_t | x_0]: chain = 1 - abar_t",
            "posterior: variance beta_tilde_t (residual variance)"} <= failed


def test_monte_carlo_mean_check_detects_a_biased_chain(schedule, monkeypatch):
    """A chain whose noise has mean 0.05 must fail the chain-mean check."""
    real = torch.randn

    def biased(*args, **kwargs):
        return real(*args, **kwargs) + 0.05

    monkeypatch.setattr(torch, "randn", biased)
    df = rows(theory.monte_carlo_checks(schedule, [100], 4000, make_generator(0, "mc")))
    assert not df[df["identity"].str.startswith("E[x_t")]["passed"].any()


def test_expected_mse_chain_check(schedule):
    df = rows(theory.mse_checks_chain(schedule, TS, make_generator(0, "mse"), shape=(2, 3, 16, 16)))
    assert df["passed"].all(), theory.failures(df)
    assert set(df["method"]) == {"exact (float64, 2 images, chain moments)", "Monte Carlo (2 images, chain)"}
    bad = rows(theory.mse_checks_chain(not_cumulative(schedule), TS, make_generator(0, "mse"), shape=(2, 3, 16, 16)))
    assert not bad[bad["t"] >= 100]["passed"].any()


def test_chain_moments_match_the_sampled_chain(schedule):
    """The exact moments of chain_moments are those of the chain that run_chain samples."""
    x0 = torch.tensor([[-1.0, 0.0, 0.5]], dtype=torch.float64).expand(20000, 3).contiguous()
    sampled = theory.run_chain(x0, schedule, {7, 300}, make_generator(0, "moments"))
    exact = theory.chain_moments(x0[:1], schedule, {7, 300})
    for t in (7, 300):
        m, v = exact[t]
        assert torch.allclose(m[0], schedule.alpha_bars[t].sqrt() * x0[0], rtol=1e-12)
        assert v == pytest.approx(1 - float(schedule.alpha_bars[t]), rel=1e-12)
        assert torch.allclose(sampled[t].mean(0), m[0], atol=5 * (v / 20000) ** 0.5)
        assert torch.allclose(sampled[t].var(0), torch.full((3,), v, dtype=torch.float64), rtol=5 * (2 / 20000) ** 0.5)


def _mse_with_noise_term_error(factor: float):
    """forward.expected_mse with its noise term (1 - abar_t) multiplied by ``factor``."""
    real = forward.expected_mse

    def wrong(x0, alpha_bars):
        return real(x0, alpha_bars) + (factor - 1) * (1 - alpha_bars.double().unsqueeze(1))

    return wrong


@pytest.mark.parametrize("factor", [1.01, 0.99])
def test_expected_mse_chain_check_fails_a_one_percent_error_in_the_noise_term(schedule, monkeypatch, factor):
    ts = [1, 10, 100, 500, 1000]
    good = rows(theory.mse_checks_chain(schedule, ts, make_generator(0, "mse")))
    assert good["passed"].all(), theory.failures(good)
    exact = good[good["method"].str.startswith("exact")]
    # the sharp row: float64 rounding, far below 1% of the noise term at every t (1e-6 at t = 1)
    assert (exact["tolerance"] < 1e-9 * (1 - schedule.alpha_bars[ts].numpy())).all()
    # the formula is 1% off in its noise term: every exact row fails, so the run fails
    monkeypatch.setattr(forward, "expected_mse", _mse_with_noise_term_error(factor))
    bad = rows(theory.mse_checks_chain(schedule, ts, make_generator(0, "mse")))
    assert not bad[bad["method"].str.startswith("exact")]["passed"].any()
    with pytest.raises(theory.CheckFailed, match=r"E\[MSE\(x_t, x_0\)\]: chain moments on random images"):
        theory.assert_checks_passed(bad)


def test_expected_mse_chain_check_fails_a_chain_with_one_percent_more_noise(schedule, monkeypatch):
    """The chain's step adds 1% more noise variance: the exact row fails at every t."""
    real = forward.q_step
    monkeypatch.setattr(forward, "q_step", lambda x, t, noise, s: real(x, t, noise * 1.01**0.5, s))
    bad = rows(theory.mse_checks_chain(schedule, TS, make_generator(0, "mse")))
    assert not bad[bad["method"].str.startswith("exact")]["passed"].any()


def test_expected_mse_forward_check(schedule):
    x0 = torch.rand(3, 3, 32, 32, generator=make_generator(0, "img")) * 2 - 1
    table = forward.mse_table(x0, ["a", "b", "c"], 500, schedule, seed=3)
    df = rows(theory.mse_checks_forward(table, x0, schedule, TS + [500]))
    assert list(df["t"]) == [1, 10, 100, 500]  # t = 1000 is beyond the table (mse_max_t = 500)
    assert df["passed"].all(), theory.failures(df)
    # a forward stage that noised with the wrong schedule is caught
    wrong = forward.mse_table(x0, ["a", "b", "c"], 500, off_by_one(schedule), seed=3)
    assert not rows(theory.mse_checks_forward(wrong, x0, schedule, TS))["passed"].iloc[0]
    # so is a table measured on other images than the ones given
    other = forward.mse_table(x0 * 0.5, ["a", "b", "c"], 500, schedule, seed=3)
    assert not rows(theory.mse_checks_forward(other, x0, schedule, [500]))["passed"].any()


# ------------------------------------------------------------------------------------------
# DDIM (sec:q2-5): sigma of eq. 16, the eta = 1 posterior, the marginals of q_sigma, the report's step
# ------------------------------------------------------------------------------------------


def sigma_hat(s: Schedule, t: int, t_prev: int, eta: float) -> float:
    """A wrong eq. 16: eta sqrt(1 - abar_t / abar_t') (the strided beta, DDPM's "large" variance)."""
    return eta * (1 - float(s.alpha_bars[t] / s.alpha_bars[t_prev])) ** 0.5


def conditional_without_sigma(s: Schedule, t: int, t_prev: int, sigma: float):
    """A wrong eq:ddim-conditional: direction coefficient sqrt(1 - abar_t') (sigma^2 not subtracted)."""
    ab, abp = float(s.alpha_bars[t]), float(s.alpha_bars[t_prev])
    k = ((1 - abp) / (1 - ab)) ** 0.5
    return abp**0.5 - ab**0.5 * k, k, sigma**2


def conditional_wrong_x0(s: Schedule, t: int, t_prev: int, sigma: float):
    """A wrong eq:ddim-conditional: abar_t' instead of sqrt(abar_t') in front of x_0."""
    c0, k, var = theory.ddim_conditional(s, t, t_prev, sigma)
    abp = float(s.alpha_bars[t_prev])
    return c0 - abp**0.5 + abp, k, var


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddim_sigma_closed_forms(kind):
    s = Schedule.make(kind, 200)
    bt = s.posterior_variance()
    for t in range(1, 201):
        assert theory.ddim_sigma(s, t, t - 1, 0.0) == 0.0
        assert theory.ddim_sigma(s, t, t - 1, 1.0) ** 2 == pytest.approx(float(bt[t]), rel=1e-9, abs=1e-300)
        for tp in (0, t // 2, t - 1):  # sigma^2 <= 1 - abar_t' for eta <= 1: the conditional is defined
            assert theory.ddim_sigma(s, t, tp, 1.0) ** 2 <= 1 - float(s.alpha_bars[tp]) + 1e-15
    assert theory.ddim_prev_timestep(1) == 0 and theory.ddim_prev_timestep(1000) == 500
    # eta = 0: the conditional is a point mass whose mean moves x_t along its own noise direction
    c0, k, var = theory.ddim_conditional(s, 100, 50, 0.0)
    ab, abp = float(s.alpha_bars[100]), float(s.alpha_bars[50])
    assert var == 0 and k == pytest.approx(((1 - abp) / (1 - ab)) ** 0.5) and c0 == pytest.approx(abp**0.5 - ab**0.5 * k)


def test_ddim_exact_checks_pass_on_every_t_and_schedule():
    for kind in ("linear", "cosine", "quadratic", "sigmoid"):
        s = Schedule.make(kind, 1000)
        df = rows(theory.ddim_exact_checks(s, list(range(1, 1001, 7)) + [1000], make_generator(0, "d"), n=50))
        assert df["passed"].all(), theory.failures(df)[:3]
        assert (df["abs_error"] / df["tolerance"]).max() < 0.5  # not passing by a hair


def test_ddim_eta_one_check_rejects_a_wrong_sigma_or_conditional(schedule):
    df = rows(theory.ddim_exact_checks(schedule, TS, make_generator(0, "d")))
    assert len(df) == 4 * len(TS) and df["passed"].all(), theory.failures(df)
    assert set(df["equation"]) == {"eq:ddim-eta-one", "eq:ddim-sigma", "eq:ddim-update"}
    bad = rows(theory.ddim_exact_checks(schedule, TS, make_generator(0, "d"), sigma_fn=sigma_hat))
    eta_one = bad[bad["identity"].str.startswith("DDIM eta = 1") & (bad["t"] >= 10)]
    assert len(eta_one) == 3 * 3 and not eta_one["passed"].any()  # variance and both mean coefficients, t = 10, 100, 1000
    bad = rows(theory.ddim_exact_checks(schedule, TS, make_generator(0, "d"), conditional=conditional_without_sigma))
    coef = bad[bad["identity"].str.contains("coefficient") & (bad["t"] >= 10)]
    assert len(coef) == 2 * 3 and not coef["passed"].any()
    for wrong in (off_by_one(schedule), not_cumulative(schedule)):
        bad = rows(theory.ddim_exact_checks(wrong, TS, make_generator(0, "d")))
        var = bad[bad["identity"].str.contains("sigma_t\\^2") & (bad["t"] >= 10)]
        assert len(var) == 3 and not var["passed"].any()


def test_ddim_step_check_catches_a_wrong_sigma_in_the_reports_sampler(schedule, monkeypatch):
    """The report's ddim_step is checked against eq:ddim-update: a sampler with a wrong eq. 16 fails."""
    from diffusion_report.core import samplers

    monkeypatch.setattr(samplers, "ddim_sigma", lambda ab, abp, eta: eta * (1 - ab / abp) ** 0.5)
    bad = rows(theory.ddim_exact_checks(schedule, TS, make_generator(0, "d")))
    step = bad[bad["equation"] == "eq:ddim-update"]
    assert len(step) == len(TS) and not step["passed"].any()
    assert bad[bad["equation"] != "eq:ddim-update"]["passed"].all()


def test_ddim_marginal_monte_carlo_check(schedule):
    n = 20000
    df = rows(theory.ddim_monte_carlo_checks(schedule, TS, n, make_generator(0, "dmc")))
    assert len(df) == 2 * len(theory.DDIM_ETAS) * len(TS) and df["passed"].all(), theory.failures(df)
    assert {0.0, 1.0} <= set(theory.DDIM_ETAS) and len(theory.DDIM_ETAS) >= 3
    # tolerance: Z_SCORE standard errors of the variance of x_t' (t' = 500 for t = 1000)
    row = df[df["identity"].str.contains("Var") & (df["t"] == 1000)].iloc[0]
    v = 1 - float(schedule.alpha_bars[500])
    assert row["expected"] == pytest.approx(v) and row["tolerance"] == pytest.approx(theory.Z_SCORE * v * (2 / (n - 1)) ** 0.5)
    # sigma^2 not subtracted in the direction coefficient: Var = 1 - abar_t' + sigma^2 is caught for every eta > 0;
    # at eta = 0 (sigma = 0) the wrong formula coincides with the right one and passes
    bad = rows(theory.ddim_monte_carlo_checks(schedule, TS, n, make_generator(0, "dmc"), conditional=conditional_without_sigma))
    var_rows = bad[bad["identity"].str.contains("Var") & (bad["t"] >= 10)]
    eta0 = var_rows["identity"].str.contains("eta = 0:")
    assert len(var_rows) == 3 * len(theory.DDIM_ETAS) and eta0.sum() == 3
    assert not var_rows[~eta0]["passed"].any() and var_rows[eta0]["passed"].all()
    # a wrong x_0 coefficient moves the mean
    bad = rows(theory.ddim_monte_carlo_checks(schedule, TS, n, make_generator(0, "dmc"), conditional=conditional_wrong_x0))
    mean_rows = bad[bad["identity"].str.contains("E\\[") & (bad["t"] >= 100)]
    assert len(mean_rows) == 2 * len(theory.DDIM_ETAS) and not mean_rows["passed"].any()


def test_run_checks_is_deterministic_and_fails_loudly(schedule):
    a = theory.run_checks(schedule, [10, 500], 2000, seed=1)
    b = theory.run_checks(schedule, [10, 500], 2000, seed=1)
    c = theory.run_checks(schedule, [10, 500], 2000, seed=2)
    assert list(a.columns) == theory.COLUMNS
    pd.testing.assert_frame_equal(a, b)
    mc = a["method"].str.startswith("Monte Carlo")
    assert not (a.loc[mc, "measured"].values == c.loc[mc, "measured"].values).all()
    theory.assert_checks_passed(a)
    bad = theory.run_checks(off_by_one(schedule), [10, 500], 2000, seed=1)
    with pytest.raises(theory.CheckFailed, match=r"sum of noise variances = 1 - abar_t \(eq:noise-var\) at t=10"):
        theory.assert_checks_passed(bad)
    with pytest.raises(ValueError, match="outside 1..T"):
        theory.run_checks(schedule, [0, 10], 2000, seed=1)


def test_write_checks_writes_only_when_every_check_passes(tmp_path, config, monkeypatch):
    cfg = dict(config["theory"], mc_samples=1000, check_timesteps=[1, 50])
    out = tmp_path / "theory" / "checks.csv"
    df = theory.theory_checks(config["schedule"], cfg, 0, str(out))
    assert out.exists() and len(pd.read_csv(out)) == len(df) and pd.read_csv(out)["passed"].all()
    out2 = tmp_path / "bad.csv"
    real = Schedule.from_config
    monkeypatch.setattr(Schedule, "from_config", classmethod(lambda cls, c: off_by_one(real(c))))
    with pytest.raises(theory.CheckFailed, match="theory checks failed"):
        theory.theory_checks(config["schedule"], cfg, 0, str(out2))
    assert not out2.exists() and not list(tmp_path.glob(".bad*"))


# ------------------------------------------------------------------------------------------
# Rendering: pandoc AST -> SVG math, equation numbers, links, references; HTML and PDF
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parts():
    """(body, reference list) of theory.tex, as the theory_render rule writes them."""
    return latex.render_theory(TEX, BIB)


@pytest.fixture(scope="module")
def fragment(parts):
    return "".join(parts)  # what latex.render_fragment returns


def visible_text(fragment: str) -> str:
    no_svg = re.sub(r"<svg.*?</svg>", "", fragment, flags=re.S)
    return htmllib.unescape(re.sub(r"<[^>]+>", " ", no_svg))


def count_math_nodes(ast) -> int:
    return json.dumps(ast).count('{"t": "Math"')


def test_every_math_span_is_svg_and_no_tex_is_left(fragment):
    ast = latex.latex_to_ast(TEX, BIB)
    n_math = count_math_nodes(ast)
    assert n_math > 50
    assert fragment.count('<span class="math ') == n_math
    assert fragment.count("<svg") == n_math == fragment.count("</svg>")
    assert "<path" in fragment and "<text" not in fragment  # glyphs are outlines, not font text
    assert "<script" not in fragment.lower() and "mathjax" not in fragment.lower()
    text = visible_text(fragment)
    assert not re.search(r"\\[A-Za-z]+|\$|\\\(|\\\[", text), re.findall(r".{20}(?:\\[A-Za-z]+|\$).{20}", text)[:5]
    assert "Exercise 1" in text and "posterior" in text


class _SvgAlternatives(HTMLParser):
    """(role, aria-label, aria-hidden, <title> text) of every <svg>, parsed as a browser would read the attributes."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.found, self._title = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "svg":
            a = dict(attrs)
            self.found.append({"role": a.get("role"), "label": a.get("aria-label"), "hidden": a.get("aria-hidden"), "title": None})
        elif tag == "title" and self.found and self.found[-1]["title"] is None:
            self._title = []

    def handle_data(self, data):
        if self._title is not None:
            self._title.append(data)

    def handle_endtag(self, tag):
        if tag == "title" and self._title is not None:
            self.found[-1]["title"], self._title = "".join(self._title), None


def test_every_math_svg_has_its_tex_as_text_alternative(fragment):
    """Accessible math: each SVG is role="img" with a non-empty aria-label and <title> equal to its TeX."""
    ast = latex.latex_to_ast(TEX, BIB)
    tex = []

    def grab(n):
        if n.get("t") == "Math":
            kind, src = n["c"][0]["t"], n["c"][1]
            tex.append(latex.math_label(src if kind == "InlineMath" else latex.parse_display(src)[0]))
        return None

    latex._walk(ast["blocks"], grab)
    parser = _SvgAlternatives()
    parser.feed(fragment)
    assert len(parser.found) == len(tex) == fragment.count("<svg") > 50
    for svg, src in zip(parser.found, tex):
        assert svg["role"] == "img" and svg["hidden"] is None
        assert svg["label"] and svg["label"].strip() and svg["label"] == svg["title"] == src
    labels = [svg["label"] for svg in parser.found]
    assert r"q_\sigma(x_{t'} \mid x_t, x_0)" in " ".join(labels)  # macros expanded, primes and escapes kept
    # markup in TeX is escaped, not injected
    one = latex.tex_to_svg(r"a < b \& c")
    assert 'aria-label="a &lt; b \\&amp; c"' in one and "<title>a &lt; b \\&amp; c</title>" in one


def test_equations_are_numbered_and_cross_references_resolve(fragment):
    numbers = [int(n) for n in re.findall(r'<span class="eqno"[^>]*>\((\d+)\)</span>', fragment)]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 15
    ids = set(re.findall(r'\sid="([^"]+)"', fragment))
    links = re.findall(r'<a class="eqref" href="#([^"]+)">\((\d+)\)</a>', fragment)
    assert len(links) >= 20
    labelled = dict(latex.equation_numbers(fragment))
    for target, n in links:
        assert target in ids
        assert labelled[target.removeprefix(latex.ID_PREFIX)] == f"({n})"
    # every equation a numerical check refers to exists in the derivation
    df = theory.run_checks(Schedule.make("linear", 50), [5], 200, seed=0)
    for label in set(df["equation"]):
        assert latex.anchor_id(label) in ids, label


def test_reference_list_and_citation_links(parts):
    """The reference list comes apart from the body, without a heading (the report gives it its own
    section); every citation of the body links to an entry of the list."""
    body, refs = parts
    for key, author in [("ho2020ddpm", "Ho"), ("song2021ddim", "Song"), ("nichol2021improved", "Nichol"),
                        ("hertz2022p2p", "Hertz")]:
        assert f'id="{latex.ID_PREFIX}ref-{key}"' in refs and f'id="{latex.ID_PREFIX}ref-{key}"' not in body
        assert f'href="#{latex.ID_PREFIX}ref-{key}"' in body
        assert author in visible_text(refs)
    assert refs.lstrip().startswith(f'<div id="{latex.ID_PREFIX}refs" class="references')
    assert "References" not in visible_text(body) and "csl-entry" not in body and "<h" not in refs
    cited = set(re.findall(r'href="#([^"]+)" role="doc-biblioref"', body))
    assert len(cited) >= 5 and cited <= set(re.findall(r'\sid="([^"]+)"', refs))
    assert latex.render_fragment(TEX, BIB) == body + refs


def test_no_citation_no_reference_list(tmp_path):
    tex = tmp_path / "t.tex"
    tex.write_text("\\documentclass{article}\\begin{document}\nNo citation, $x_0$.\n\\end{document}\n")
    body, refs = latex.render_theory(tex, BIB)
    assert refs == "" and body.count("<svg") == 1
    out, out_refs = tmp_path / "theory.html", tmp_path / "references.html"
    latex.theory_render(str(tex), str(out), str(BIB), str(out_refs))
    assert out.read_text() == body and out_refs.read_text() == ""


def test_inline_tex_typesets_math_and_escapes_text():
    out = latex.inline_tex(r"chain $x_0$ coefficient $= \sqrt{\bar\alpha_t}$ of `ddim_step` <b> & co")
    assert out.count('<span class="math inline"><svg role="img"') == 2
    assert 'aria-label="x_0"' in out and "<title>= \\sqrt{\\bar\\alpha_t}</title>" in out
    assert "<code>ddim_step</code>" in out and "&lt;b&gt; &amp; co" in out and "<b>" not in out
    assert latex.inline_tex("no math") == "no math"
    with pytest.raises(latex.TheoryRenderError, match="unpaired"):
        latex.inline_tex("costs $5")
    with pytest.raises(latex.TheoryRenderError, match=r"\\foo"):
        latex.inline_tex(r"$\foo$")


def test_render_rejects_what_it_cannot_render(tmp_path):
    def render(body: str):
        tex = tmp_path / "t.tex"
        tex.write_text("\\documentclass{article}\\begin{document}\n" + body + "\n\\end{document}\n")
        return latex.render_fragment(tex)

    ok = render("See \\eqref{eq:a}.\\begin{equation}\\label{eq:a} a = b \\end{equation}\\[c\\]")
    assert ok.count("<svg") == 2 and 'href="#theory-eq-a">(1)</a>' in ok and ok.count('class="eqno"') == 1
    with pytest.raises(latex.TheoryRenderError, match="mycmd"):
        render("Text \\mycmd{x} here.")
    with pytest.raises(latex.TheoryRenderError, match=r"\\foo"):
        render("Math $\\foo{x} + y$.")
    with pytest.raises(latex.TheoryRenderError, match="no equation or section has this label"):
        render("See \\eqref{eq:missing}. \\begin{equation}\\label{eq:a} a \\end{equation}")
    with pytest.raises(latex.TheoryRenderError, match="used twice"):
        render("\\begin{equation}\\label{eq:a} a \\end{equation}\\begin{equation}\\label{eq:a} b \\end{equation}")


def test_svg_size_follows_text_and_baseline():
    svg = latex.tex_to_svg(r"x_t = \sqrt{\bar\alpha_t}\, x_0")
    w, h, va = (float(v) for v in re.search(r"width:([\d.]+)em;height:([\d.]+)em;vertical-align:(-?[\d.]+)em", svg).groups())
    assert 2 < w < 10 and 0.8 < h < 2.5 and -1 < va < 0  # a subscript hangs below the baseline
    flat = latex.tex_to_svg("x")
    assert float(re.search(r"height:([\d.]+)em", flat).group(1)) < h


def _flate_streams(pdf: bytes) -> list[bytes]:
    out = []
    for raw in re.findall(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            out.append(zlib.decompress(raw))
        except zlib.error:
            pass
    return out


def _curve_ops(pdf: bytes) -> int:
    return sum(len(re.findall(rb"(?:^|\s)(?:-?[\d.]+\s+){6}c(?=\s)", s)) for s in _flate_streams(pdf) if b" Tf" in s or b" cm" in s)


@pytest.fixture(scope="module")
def pdf_document(fragment):
    from weasyprint import HTML

    doc = f'<html><head><meta charset="utf-8"></head><body><section id="theory">{fragment}</section></body></html>'
    return HTML(string=doc).render()


@pytest.fixture(scope="module")
def pdf_bytes(pdf_document) -> bytes:
    return pdf_document.write_pdf()


def test_pdf_draws_every_equation_as_vector_paths(fragment, pdf_document, pdf_bytes):
    from weasyprint import HTML

    def boxes(box):
        yield box
        for child in getattr(box, "children", None) or []:
            yield from boxes(child)

    all_boxes = [b for page in pdf_document.pages for b in boxes(page._page_box)]
    svgs = [b for b in all_boxes if type(getattr(b, "replacement", None)).__name__ == "SVGImage"]
    assert len(svgs) == fragment.count("<svg")
    assert all(b.width > 0 and b.height > 0 for b in svgs)
    text = "".join(b.text for b in all_boxes if type(b).__name__ == "TextBox")
    assert "Exercise 1" in text and "\\frac" not in text and "$" not in text
    pdf = pdf_bytes
    no_math = re.sub(r"<svg.*?</svg>", "", fragment, flags=re.S)
    plain = HTML(string=f'<html><body>{no_math}</body></html>').write_pdf()
    # glyph outlines are Bezier curves in the content stream; text alone draws (almost) none
    assert _curve_ops(pdf) > 20 * len(svgs) > 0
    assert _curve_ops(plain) < len(svgs)


@pytest.mark.skipif(shutil.which("pdftotext") is None, reason="poppler's pdftotext not installed")
def test_pdf_text_layer_has_the_prose_and_no_tex(pdf_bytes, tmp_path):
    path = tmp_path / "theory.pdf"
    path.write_bytes(pdf_bytes)
    out = subprocess.run(["pdftotext", str(path), "-"], capture_output=True, text=True, check=True).stdout
    text = " ".join(out.split())
    assert "Exercise 1: the forward process in one step" in text
    assert "Denoising Diffusion Implicit Models" in text  # the reference list, printed after the body
    assert "\\frac" not in text and "\\sqrt" not in text and "$" not in text


# ------------------------------------------------------------------------------------------
# Report contract
# ------------------------------------------------------------------------------------------


def test_report_context_and_section_template(tmp_path, parts, config):
    from diffusion_report.report import render as report

    fragment, refs = parts
    (tmp_path / "theory.html").write_text(fragment)
    (tmp_path / "references.html").write_text(refs)
    df = theory.run_checks(Schedule.from_config(config["schedule"]), [1, 100], 1000, seed=0)
    df.to_csv(tmp_path / "checks.csv", index=False)
    schedule = Schedule.from_config(config["schedule"])
    params = theory.check_parameters(schedule, config["schedule"], {"mc_samples": 1000})
    (tmp_path / "params.json").write_text(json.dumps(params))
    ctx = theory_section.report_context({"html": str(tmp_path / "theory.html"), "refs": str(tmp_path / "references.html"),
                                         "checks": str(tmp_path / "checks.csv"), "params": str(tmp_path / "params.json")}, config)
    assert ctx["alpha_bar_T"] == float(schedule.alpha_bars[-1]) and ctx["mc_samples"] == 1000
    assert ctx["z_score"] == theory.Z_SCORE and ctx["ddim_etas"] == ["0", "0.5", "1"]
    assert ctx["n_checks"] == len(df) == ctx["n_passed"] and ctx["timesteps"] == [1, 100]
    assert all(re.fullmatch(r"\(\d+\)", r["equation"]) for r in ctx["summary_rows"])  # labels -> equation numbers
    env = report.environment(ROOT / "report" / "templates")
    out = env.get_template("sections/theory.html.j2").render(ctx=ctx, config=config)
    assert out.lstrip().startswith('<section id="theory">') and "<h2>" in out
    assert ctx["references"] == refs and 'id="theory-refs"' not in out  # the report prints the list at its end
    assert out.count("<svg") >= fragment.count("<svg")  # the fragment is inserted unescaped
    assert "&lt;svg" not in out and "Table 1." in out
    assert f"{ctx['n_passed']} of {ctx['n_checks']} checks" in out


ASCII_NOTATION = re.compile(r"sqrt\(|abar|alpha_bar|\bx0\b|x_[0-9tT]|eps|mu_|beta_|sigma|_theta|\^2|floor\(|\|")


def _visible(cell: str) -> str:
    return htmllib.unescape(re.sub(r"<[^>]+>", "", re.sub(r"<svg.*?</svg>", "", cell, flags=re.S)))


def test_checks_table_typesets_the_identities(tmp_path, parts, config):
    """The checks table writes each identity like the derivation: math as SVG with its TeX as text
    alternative, no ASCII notation (sqrt(abar_t), x0, |mu_tilde - mu_theta|^2) in its visible text."""
    from diffusion_report.report import render as report

    fragment, refs = parts
    (tmp_path / "theory.html").write_text(fragment)
    (tmp_path / "references.html").write_text(refs)
    schedule = Schedule.from_config(config["schedule"])
    theory.run_checks(schedule, [1, 100], 200, seed=0).to_csv(tmp_path / "checks.csv", index=False)
    (tmp_path / "params.json").write_text(json.dumps(theory.check_parameters(schedule, config["schedule"], {"mc_samples": 200})))
    ctx = theory_section.report_context({k: str(tmp_path / f) for k, f in [("html", "theory.html"), ("refs", "references.html"),
                                         ("checks", "checks.csv"), ("params", "params.json")]}, config)
    out = report.environment(ROOT / "report" / "templates").get_template("sections/theory.html.j2").render(ctx=ctx, config=config)
    table = out[out.index('<table id="tab-1">'):]
    cells = re.findall(r"<tr><td>(.*?)</td>", table, re.S)  # the identity column
    assert len(cells) == ctx["n_identities"] > 15
    labels = []
    for cell in cells:
        parser = _SvgAlternatives()
        parser.feed(cell)
        assert parser.found, cell[:200]  # every identity has some notation, typeset
        assert all(s["role"] == "img" and s["label"] and s["label"] == s["title"] for s in parser.found)
        assert not ASCII_NOTATION.search(_visible(cell)), _visible(cell)
        labels += [s["label"] for s in parser.found]
    assert out.count("<svg") == fragment.count("<svg") + table.count("<svg") + 1  # + abar_T in the prose
    labels = " ".join(labels)
    assert r"\sqrt{\bar\alpha_t}" in labels and r"\lVert \tilde\mu_t - \mu_\theta \rVert^2" in labels


def test_every_check_has_a_typeset_name(schedule):
    """Every identity the checks write (all DDIM etas, the forward stage's) has a form in IDENTITY_TEX."""
    df = theory.run_checks(schedule, [1, 10], 100, seed=0)
    names = set(df["identity"]) | {"E[MSE(x_t, x_0)]: forward stage's images"}
    for name in sorted(names):
        tex = theory_section.identity_tex(name)
        assert tex is not None, f"no typeset form of {name!r}: add it to IDENTITY_TEX"
        assert not ASCII_NOTATION.search(re.sub(r"\$[^$]*\$|`[^`]*`", "", tex)), tex
        latex.inline_tex(tex)  # renders (every command known to the SVG renderer)
    assert theory_section.identity_tex("a new check") is None
    assert str(theory_section.identity_markup("a <new> check")) == "a &lt;new&gt; check"
