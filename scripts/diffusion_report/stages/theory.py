"""Theory stage (exercises 1-2), rule ``theory_checks``: numerical checks of the derivation.

* **Checks** :func:`run_checks` verifies each identity of the derivation on the configured
  schedule and returns one row per (identity, t): exact float64 identities, and Monte-Carlo
  comparisons of the sequential chain (Ho et al. 2020, eq. 2) with the closed form (eq. 4) and
  the posterior (eqs. 6-7), each with a tolerance of :data:`Z_SCORE` standard errors; the
  expected MSE of exercise 3 exactly from the chain's moments; and the DDIM derivation (Song et
  al. 2021: eta = 1 gives DDPM's posterior, the marginals of q_sigma match for every eta, the
  report's sampler step is eq. 12).

Notation is the package's (:mod:`diffusion_report.core.schedules`): t = 0 is clean data, arrays have
length T + 1, ``alpha_bars[t]`` = prod_{i<=t} alpha_i.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import pandas as pd
import torch

from diffusion_report.core.forward import (
    mu_theta,
    posterior_mean_eps,
    posterior_mean_x0,
)
from diffusion_report.core.schedules import Schedule

log = logging.getLogger(__name__)


def unrolled_noise_coefficients(schedule: Schedule, t: int) -> torch.Tensor:
    """c_{t,s} = sqrt(beta_s) prod_{i=s+1}^t sqrt(alpha_i) for s = 1..t (eq:unrolled). Shape (t,).

    Built from the betas step by step (not from alpha_bars), so it checks the cumulative product.
    """
    betas = schedule.betas[1 : t + 1]
    alphas = 1.0 - betas
    # prod_{i=s+1}^t alpha_i: reversed cumulative product, shifted by one
    tail = torch.flip(torch.cumprod(torch.flip(alphas, [0]), 0), [0])  # prod_{i=s}^t
    tail = torch.cat([tail[1:], tail.new_ones(1)])
    return betas.sqrt() * tail.sqrt()


def kl_weight(schedule: Schedule, t: int) -> float:
    """beta_t^2 / (alpha_t (1 - abar_t)): ||mu_tilde - mu_theta||^2 = weight ||eps - eps_theta||^2 (eq:kl-term)."""
    v = float(1 - schedule.alpha_bars[t])
    return float(schedule.betas[t]) ** 2 / (float(schedule.alphas[t]) * v) if v > 0 else math.nan


def posterior_variance_by_conditioning(schedule: Schedule, t: int) -> torch.Tensor:
    """Var[x_{t-1} | x_t, x_0] from Gaussian conditioning of the joint (x_{t-1}, x_t) given x_0.

    Var(x_{t-1}|x_0) - Cov(x_{t-1}, x_t|x_0)^2 / Var(x_t|x_0), with Var(x_{t-1}|x_0) = 1 - abar_{t-1}
    (eq:marginal), Cov = sqrt(alpha_t) (1 - abar_{t-1}) and Var(x_t|x_0) = alpha_t (1 - abar_{t-1}) + beta_t
    (one step, eq:forward-step). Should equal beta_tilde_t (eq:posterior-var), which completes the square.
    """
    v_prev = 1 - schedule.alpha_bars[t - 1]
    alpha, beta = schedule.alphas[t], schedule.betas[t]
    cov = alpha.sqrt() * v_prev
    v_t = alpha * v_prev + beta
    return v_prev - cov**2 / v_t


def _sqrt(v: float) -> float:
    """sqrt that gives nan (a failed check row, not a crash) for a negative argument."""
    return math.sqrt(v) if v >= 0 else math.nan


def _div(a: float, b: float) -> float:
    return a / b if b != 0 else math.nan


def ddim_prev_timestep(t: int) -> int:
    """The strided partner t' < t of a checked t for the DDIM checks: floor(t / 2) (t = 1 -> t' = 0, DDIM's last step)."""
    return t // 2


def ddim_sigma(schedule: Schedule, t: int, t_prev: int, eta: float) -> float:
    """sigma_t(eta) = eta sqrt((1 - abar_{t'}) / (1 - abar_t)) sqrt(1 - abar_t / abar_{t'}) (eq:ddim-sigma, DDIM eq. 16).

    nan when a wrong schedule makes it undefined.
    """
    ab, ab_prev = float(schedule.alpha_bars[t]), float(schedule.alpha_bars[t_prev])
    return eta * _sqrt(_div(1 - ab_prev, 1 - ab)) * _sqrt(1 - _div(ab, ab_prev))


def ddim_conditional(schedule: Schedule, t: int, t_prev: int, sigma: float) -> tuple[float, float, float]:
    """q_sigma(x_{t'} | x_t, x_0) (eq:ddim-conditional, DDIM eq. 7) as (x_0 coefficient, x_t coefficient, variance).

    mean = sqrt(abar_{t'}) x_0 + sqrt(1 - abar_{t'} - sigma^2) (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t),
    variance sigma^2; nan coefficients when sigma^2 > 1 - abar_{t'} or 1 - abar_t = 0.
    """
    ab, ab_prev = float(schedule.alpha_bars[t]), float(schedule.alpha_bars[t_prev])
    k = _div(_sqrt(1 - ab_prev - sigma**2), _sqrt(1 - ab))
    return _sqrt(ab_prev) - _sqrt(ab) * k, k, sigma**2


DDIM_ETAS = (0.0, 0.5, 1.0)  # eta values of the DDIM marginal check (eq:ddim-marginal)


DDIM_STEP_ETA = 0.5  # eta of the check of the report's DDIM step against eq:ddim-update (noise and direction both present)


Z_SCORE = 5.0  # Monte-Carlo tolerance: this many standard errors (two-sided false alarm ~ 6e-7 per row)


EPS64 = float(torch.finfo(torch.float64).eps)


ULPS = 64  # float64 identities: this many machine epsilons, times condition number and scale


MC_ATOL = 1e-12  # floor for Monte-Carlo tolerances whose standard error is exactly 0 (e.g. t = 1)


CHAIN_X0 = 1.0  # clean value of the chain-vs-closed-form check (a white pixel in [-1, 1])


COLUMNS = ["identity", "equation", "method", "t", "measured", "expected", "abs_error", "rel_error", "tolerance", "passed"]


class CheckFailed(AssertionError):
    """A numerical check of the theory section failed."""


@dataclass(frozen=True)
class Check:
    identity: str
    equation: str  # label in theory.tex
    method: str  # "exact (float64)" or "Monte Carlo (n=...)" or "forward stage"
    t: int
    measured: float
    expected: float
    tolerance: float

    def row(self) -> dict:
        err = abs(self.measured - self.expected)
        rel = err / abs(self.expected) if self.expected != 0 else (0.0 if err == 0 else math.inf)
        passed = bool(err <= self.tolerance) and math.isfinite(self.measured)
        return {"identity": self.identity, "equation": self.equation, "method": self.method, "t": self.t,
                "measured": self.measured, "expected": self.expected, "abs_error": err, "rel_error": rel,
                "tolerance": self.tolerance, "passed": passed}


def exact_tolerance(condition: float, scale: float) -> float:
    """Float64 rounding budget: ULPS machine epsilons x the condition number of the computation x
    the magnitude of the terms. 0 (so the check fails) when a wrong schedule makes it non-finite."""
    tol = ULPS * EPS64 * condition * scale
    return tol if math.isfinite(tol) else 0.0


def exact_checks(schedule: Schedule, timesteps: list[int], generator: torch.Generator, n: int = 1000) -> list[Check]:
    """Float64 identities at each t: chain coefficients (eq:unrolled), noise variance (eq:noise-var),
    the two forms of the posterior mean (eq:posterior-mean vs eq:posterior-mean-eps) and the
    posterior variance (eq:posterior-var vs Gaussian conditioning).

    Tolerances (:func:`exact_tolerance`): a product or sum of t terms has condition t; the
    posterior mean divides by 1 - abar_t and, in the noise form, recovers x_0 by dividing by
    sqrt(abar_t), so its condition is 1/(1 - abar_t) + 1/sqrt(abar_t).
    """
    method = "exact (float64)"
    out = []
    for t in timesteps:
        ab = float(schedule.alpha_bars[t])
        ab_prev = float(schedule.alpha_bars[t - 1])
        inv = lambda v: 1.0 / v if v > 0 else math.inf  # noqa: E731
        # x_0 coefficient of the unrolled chain: prod_{i<=t} sqrt(1 - beta_i) vs sqrt(abar_t)
        chain_coef = torch.prod((1.0 - schedule.betas[1 : t + 1]).sqrt())
        out.append(Check("chain x0 coefficient = sqrt(abar_t)", "eq:unrolled", method, t,
                         float(chain_coef), math.sqrt(ab), exact_tolerance(t, 1.0)))
        c = unrolled_noise_coefficients(schedule, t)
        out.append(Check("sum of noise variances = 1 - abar_t", "eq:noise-var", method, t,
                         float((c**2).sum()), 1 - ab, exact_tolerance(t, 1.0)))
        x0 = torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1
        eps = torch.randn(n, generator=generator, dtype=torch.float64)
        x_t = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps  # eq:closed-form
        mu_a = posterior_mean_x0(x_t, x0, t, schedule)
        mu_b = posterior_mean_eps(x_t, eps, t, schedule)
        scale = max(1.0, float(mu_a.abs().max()), float(x_t.abs().max()))
        out.append(Check("posterior mean: x0 form = noise form (max |diff|)", "eq:posterior-mean-eps", method, t,
                         float((mu_a - mu_b).abs().max()), 0.0,
                         exact_tolerance(inv(1 - ab) + inv(math.sqrt(ab)), scale)))
        # the KL term: distance of the means (x_0 form vs a noise prediction) = weighted noise distance
        eps_pred = eps + 0.3 * torch.randn(n, generator=generator, dtype=torch.float64)
        d_mean = float((mu_a - mu_theta(x_t, eps_pred, t, schedule)).pow(2).sum())
        d_eps = kl_weight(schedule, t) * float((eps - eps_pred).pow(2).sum())
        out.append(Check("KL term: |mu_tilde - mu_theta|^2 = weight |eps - eps_theta|^2", "eq:kl-term", method, t,
                         d_mean, d_eps, exact_tolerance(2 * (inv(1 - ab) + inv(math.sqrt(ab))) * max(1.0, scale),
                                                        abs(d_eps) if math.isfinite(d_eps) else 0.0)))
        bt = schedule.posterior_variance()[t]
        out.append(Check("posterior variance = Gaussian conditioning", "eq:posterior-var", method, t,
                         float(bt), float(posterior_variance_by_conditioning(schedule, t)),
                         exact_tolerance(inv(1 - ab), max(1 - ab_prev, float(schedule.betas[t])))))
    return out


def run_chain(x0: torch.Tensor, schedule: Schedule, record: set[int], generator: torch.Generator) -> dict[int, torch.Tensor]:
    """Run the sequential chain (eq:forward-step) from x0 up to max(record); return {t: x_t} for t in record."""
    from diffusion_report.core.forward import q_step

    out = {0: x0.clone()} if 0 in record else {}
    x = x0
    for s in range(1, max(record) + 1):
        x = q_step(x, s, torch.randn(x.shape, generator=generator, dtype=x.dtype), schedule)
        if s in record:
            out[s] = x.clone()
    return out


def monte_carlo_checks(schedule: Schedule, timesteps: list[int], n: int, generator: torch.Generator) -> list[Check]:
    """Sequential chain vs closed form, by Monte Carlo with n chains in float64.

    Column 0 starts at x_0 = 0, so x_t is the summed noise of eq:unrolled (its variance: eq:noise-var);
    column 1 starts at x_0 = CHAIN_X0 (mean and variance of eq:marginal). The pairs (x_{t-1}, x_t)
    of column 1 give the posterior by least squares: slope = the x_t coefficient of
    eq:posterior-mean, residual variance = beta_tilde_t (eq:posterior-var).
    Tolerance Z_SCORE standard errors: mean sqrt(v/n), variance v sqrt(2/(n-1)).
    """
    method = f"Monte Carlo (n={n})"
    record = set(timesteps) | {t - 1 for t in timesteps}
    x0 = torch.tensor([0.0, CHAIN_X0], dtype=torch.float64).expand(n, 2).contiguous()
    xs = run_chain(x0, schedule, record, generator)
    out = []
    for t in timesteps:
        ab = float(schedule.alpha_bars[t])
        v = 1 - ab
        noise, x_t = xs[t][:, 0], xs[t][:, 1]
        sd_var = v * math.sqrt(2 / (n - 1))
        out.append(Check("Var[summed noise] = 1 - abar_t", "eq:noise-var", method, t,
                         float(noise.var()), v, Z_SCORE * sd_var + MC_ATOL))
        out.append(Check("E[x_t | x_0]: chain = sqrt(abar_t) x_0", "eq:marginal", method, t,
                         float(x_t.mean()), math.sqrt(ab) * CHAIN_X0, Z_SCORE * math.sqrt(v / n) + MC_ATOL))
        out.append(Check("Var[x_t | x_0]: chain = 1 - abar_t", "eq:marginal", method, t,
                         float(x_t.var()), v, Z_SCORE * sd_var + MC_ATOL))
        # posterior by regression of x_{t-1} on x_t (both given x_0)
        x_prev = xs[t - 1][:, 1]
        dx, dp = x_t - x_t.mean(), x_prev - x_prev.mean()
        slope = float((dx * dp).sum() / (dx * dx).sum())
        resid = dp - slope * dx
        resid_var = float((resid * resid).sum() / (n - 2))
        ab_prev = float(schedule.alpha_bars[t - 1])
        bt = float(schedule.posterior_variance()[t])
        # nan (a failed row, not a crash) when a wrong schedule gives 1 - abar_t = 0
        coef = math.sqrt(float(schedule.alphas[t])) * (1 - ab_prev) / v if v > 0 else math.nan
        out.append(Check("posterior: x_t coefficient (regression slope)", "eq:posterior-mean", method, t,
                         slope, coef, Z_SCORE * math.sqrt(bt / (n * v) if v > 0 else 0.0) + MC_ATOL))
        out.append(Check("posterior: variance beta_tilde_t (residual variance)", "eq:posterior-var", method, t,
                         resid_var, bt, Z_SCORE * bt * math.sqrt(2 / (n - 2)) + MC_ATOL))
    return out


def ddim_exact_checks(schedule: Schedule, timesteps: list[int], generator: torch.Generator, n: int = 1000,
                      sigma_fn=ddim_sigma, conditional=ddim_conditional) -> list[Check]:
    """Float64 identities of the DDIM derivation (sec:q2-5) at each t.

    * eta = 1 with t' = t - 1: q_sigma(x_{t-1} | x_t, x_0) (eq:ddim-conditional with sigma of eq:ddim-sigma)
      has the x_t and x_0 coefficients of DDPM's posterior mean (eq:posterior-mean, via eq:ddim-eta-one)
      and its variance beta_tilde_t (eq:posterior-var);
    * the report's DDIM step (:func:`diffusion_report.core.samplers.ddim_step`, eta = :data:`DDIM_STEP_ETA`,
      t' = :func:`ddim_prev_timestep`) equals eq:ddim-conditional with x_0 replaced by x0_hat
      (eq:ddim-x0), which is what eq:ddim-update rewrites (max |diff| over n draws).

    ``sigma_fn`` and ``conditional`` are parameters so that tests can feed wrong formulas.
    Tolerances (:func:`exact_tolerance`): the coefficients divide by 1 - abar_t and the x_0 one
    cancels to sqrt(abar_{t-1}) beta_t / (1 - abar_t), relative condition (1 - abar_t) / beta_t;
    sigma^2 contains 1 - abar_t / abar_{t-1} = beta_t, condition 1 / beta_t; the step divides by
    sqrt(abar_t) to recover x0_hat.
    """
    from diffusion_report.core.samplers import ddim_step

    method = "exact (float64)"
    inv = lambda v: 1.0 / v if v > 0 else math.inf  # noqa: E731
    out = []
    for t in timesteps:
        ab, ab_prev = float(schedule.alpha_bars[t]), float(schedule.alpha_bars[t - 1])
        alpha, beta = float(schedule.alphas[t]), float(schedule.betas[t])
        c0, ct, var = conditional(schedule, t, t - 1, sigma_fn(schedule, t, t - 1, 1.0))
        post_ct = math.sqrt(alpha) * (1 - ab_prev) * inv(1 - ab)
        post_c0 = math.sqrt(ab_prev) * beta * inv(1 - ab)
        cond = inv(1 - ab) + (1 - ab) * inv(beta)
        out.append(Check("DDIM eta = 1, t' = t - 1: x_t coefficient = posterior's", "eq:ddim-eta-one", method, t,
                         ct, post_ct, exact_tolerance(cond, max(1.0, abs(post_ct)))))
        out.append(Check("DDIM eta = 1, t' = t - 1: x_0 coefficient = posterior's", "eq:ddim-eta-one", method, t,
                         c0, post_c0, exact_tolerance(cond, max(1.0, abs(post_c0)))))
        bt = float(schedule.posterior_variance()[t])
        out.append(Check("DDIM eta = 1, t' = t - 1: sigma_t^2 = beta_tilde_t", "eq:ddim-sigma", method, t,
                         var, bt, exact_tolerance(inv(1 - ab) + inv(beta), max(1 - ab_prev, beta))))
        # the report's step vs the conditional with x0_hat substituted for x_0
        tp = ddim_prev_timestep(t)
        ab_tp = float(schedule.alpha_bars[tp])
        x0 = torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1
        eps = torch.randn(n, generator=generator, dtype=torch.float64)
        eps_pred = eps + 0.3 * torch.randn(n, generator=generator, dtype=torch.float64)
        z = torch.randn(n, generator=generator, dtype=torch.float64)
        x_t = _sqrt(ab) * x0 + _sqrt(1 - ab) * eps  # eq:closed-form
        x0_hat = (x_t - _sqrt(1 - ab) * eps_pred) / _sqrt(ab)  # eq:ddim-x0
        sigma = sigma_fn(schedule, t, tp, DDIM_STEP_ETA)
        c0, ct, var = conditional(schedule, t, tp, sigma)
        expected = c0 * x0_hat + ct * x_t + _sqrt(var) * z  # eq:ddim-conditional at x_0 = x0_hat
        try:
            step, _ = ddim_step(eps_pred, x_t, ab, ab_tp, eta=DDIM_STEP_ETA, noise=z)
            diff = float((step - expected).abs().max())
        except (ValueError, ZeroDivisionError):  # a wrong schedule the step cannot take
            diff = math.nan
        scale = max(1.0, float(x0_hat.abs().max()), float(x_t.abs().max()))
        out.append(Check(f"DDIM step (eta = {DDIM_STEP_ETA:g}, t' = floor(t/2)): report's ddim_step = update (max |diff|)",
                         "eq:ddim-update", method, t, diff, 0.0,
                         exact_tolerance(inv(_sqrt(ab)) + inv(1 - ab), scale)))
    return out


def ddim_monte_carlo_checks(schedule: Schedule, timesteps: list[int], n: int, generator: torch.Generator,
                            etas: tuple[float, ...] = DDIM_ETAS, sigma_fn=ddim_sigma,
                            conditional=ddim_conditional) -> list[Check]:
    """The marginals of DDIM's q_sigma are DDPM's (eq:ddim-marginal), by Monte Carlo with n draws in float64.

    For each t, t' = :func:`ddim_prev_timestep` (a strided pair) and each eta: draw
    x_t ~ q(x_t | x_0) (eq:closed-form, x_0 = CHAIN_X0), then x_{t'} ~ q_sigma(x_{t'} | x_t, x_0)
    (eq:ddim-conditional with sigma of eq:ddim-sigma); the sample mean and variance of x_{t'} must be
    sqrt(abar_{t'}) x_0 and 1 - abar_{t'} within Z_SCORE standard errors (as :func:`monte_carlo_checks`).
    """
    method = f"Monte Carlo (n={n})"
    out = []
    for t in timesteps:
        tp = ddim_prev_timestep(t)
        ab, ab_tp = float(schedule.alpha_bars[t]), float(schedule.alpha_bars[tp])
        v = 1 - ab_tp
        for eta in etas:
            c0, ct, var = conditional(schedule, t, tp, sigma_fn(schedule, t, tp, eta))
            eps = torch.randn(n, generator=generator, dtype=torch.float64)
            z = torch.randn(n, generator=generator, dtype=torch.float64)
            x_t = _sqrt(ab) * CHAIN_X0 + _sqrt(1 - ab) * eps
            x_tp = c0 * CHAIN_X0 + ct * x_t + _sqrt(var) * z
            out.append(Check(f"DDIM q_sigma, eta = {eta:g}: E[x_t' | x_0] = sqrt(abar_t') x_0, t' = floor(t/2)",
                             "eq:ddim-marginal", method, t, float(x_tp.mean()), _sqrt(ab_tp) * CHAIN_X0,
                             Z_SCORE * _sqrt(v / n) + MC_ATOL))
            out.append(Check(f"DDIM q_sigma, eta = {eta:g}: Var[x_t' | x_0] = 1 - abar_t', t' = floor(t/2)",
                             "eq:ddim-marginal", method, t, float(x_tp.var()), v,
                             Z_SCORE * v * math.sqrt(2 / (n - 1)) + MC_ATOL))
    return out


def mse_standard_error(x0: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """Standard error of the empirical MSE(x_t, x_0) of one noise draw, per image. x0 (N, ...) -> (N,).

    Per pixel, d = a x_0 + b eps with a = sqrt(abar) - 1, b = sqrt(1 - abar); Var[d^2] = 4 a^2 b^2 x_0^2 + 2 b^4.
    """
    a, b = math.sqrt(alpha_bar) - 1, math.sqrt(1 - alpha_bar)
    x2 = x0.double().flatten(1).pow(2)
    var = 4 * a * a * b * b * x2 + 2 * b**4
    return var.mean(dim=1).div(x2.shape[1]).sqrt()


def chain_moments(x0: torch.Tensor, schedule: Schedule, record: set[int]) -> dict[int, tuple[torch.Tensor, float]]:
    """Exact mean and variance of x_t given x_0 under the sequential chain (eq:forward-step), in float64.

    Each step of :func:`diffusion_report.core.forward.q_step` is x_s = a_s x_{s-1} + b_s eps_s with eps_s
    independent of x_{s-1}; a_s = q_step(1, s, 0) and b_s = q_step(0, s, 1) are read from the step
    itself, so the mean is propagated as a_s m and the variance (the same for every pixel) as
    a_s^2 v + b_s^2. Returns {t: (mean, shape of x0; variance)} for t in record. No closed form is used.
    """
    from diffusion_report.core.forward import q_step

    one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    m, v = x0.double().clone(), 0.0
    out = {0: (m.clone(), 0.0)} if 0 in record else {}
    for s in range(1, max(record) + 1):
        a, b = float(q_step(one, s, zero, schedule)), float(q_step(zero, s, one, schedule))
        m = q_step(m, s, torch.zeros_like(m), schedule)
        v = a * a * v + b * b
        if s in record:
            out[s] = (m.clone(), v)
    return out


def mse_checks_chain(schedule: Schedule, timesteps: list[int], generator: torch.Generator,
                     shape: tuple[int, ...] = (4, 3, 24, 24)) -> list[Check]:
    """Expected MSE (eq:expected-mse) vs the MSE of images noised by the sequential chain, two ways.

    x_0 is uniform in [-1, 1] (like images).

    * exact: E[MSE] of the chain = mean over pixels of (m_t - x_0)^2 + v_t with the chain's own mean
      m_t and variance v_t propagated step by step (:func:`chain_moments`); compared with the formula
      in float64, tolerance :func:`exact_tolerance` with condition t (a product of t steps). Any
      error in the formula or in the chain's step larger than rounding fails, e.g. 1% in the noise term.
    * Monte Carlo: one sampled chain per image, tolerance Z_SCORE standard errors of the mean over
      images (about 6% at large t for the default shape: it shows the sampled chain agrees, the exact
      row is the sharp one).
    """
    from diffusion_report.core.forward import expected_mse

    x0 = torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1
    moments = chain_moments(x0, schedule, set(timesteps))
    xs = run_chain(x0, schedule, set(timesteps), generator)
    out = []
    for t in timesteps:
        expected = float(expected_mse(x0, schedule.alpha_bars[t : t + 1])[0].mean())
        m, v = moments[t]
        exact = float((m - x0).pow(2).flatten(1).mean(dim=1).mean()) + v
        out.append(Check("E[MSE(x_t, x_0)]: chain moments on random images", "eq:expected-mse",
                         f"exact (float64, {shape[0]} images, chain moments)", t, exact, expected,
                         exact_tolerance(t, max(1.0, abs(expected)))))
        measured = (xs[t] - x0).pow(2).flatten(1).mean(dim=1).mean()
        se = mse_standard_error(x0, float(schedule.alpha_bars[t])).pow(2).sum().sqrt() / shape[0]
        out.append(Check("E[MSE(x_t, x_0)]: chain on random images", "eq:expected-mse", f"Monte Carlo ({shape[0]} images, chain)",
                         t, float(measured), expected, Z_SCORE * float(se) + MC_ATOL))
    return out


def mse_checks_forward(mse: pd.DataFrame, x0: torch.Tensor, schedule: Schedule, timesteps: list[int]) -> list[Check]:
    """Expected MSE (eq:expected-mse) from the forward stage's clean images vs its measured mean MSE column.

    Only the timesteps present in the table (t <= forward.mse_max_t) are checked.
    """
    from diffusion_report.core.forward import expected_mse

    if "t" not in mse.columns or "mean" not in mse.columns:
        raise ValueError(f"forward MSE table needs columns 't' and 'mean', has {list(mse.columns)}")
    by_t = mse.set_index("t")["mean"]
    out = []
    for t in timesteps:
        if t not in by_t.index:
            continue
        expected = expected_mse(x0, schedule.alpha_bars[t : t + 1])[0].mean()
        se = mse_standard_error(x0, float(schedule.alpha_bars[t])).pow(2).sum().sqrt() / x0.shape[0]
        # the forward stage computes in float32: allow its rounding (~1e-6 relative) on top
        tol = Z_SCORE * float(se) + 1e-5 * float(expected) + MC_ATOL
        out.append(Check("E[MSE(x_t, x_0)]: forward stage's images", "eq:expected-mse", f"forward stage ({x0.shape[0]} images)",
                         t, float(by_t.loc[t]), float(expected), tol))
    return out


def run_checks(schedule: Schedule, timesteps: list[int], mc_samples: int, seed: int,
               forward_mse: pd.DataFrame | None = None, forward_x0: torch.Tensor | None = None) -> pd.DataFrame:
    """Every check, one row per (identity, t); columns :data:`COLUMNS`. Deterministic given seed."""
    bad = [t for t in timesteps if not 1 <= t <= schedule.T]
    if bad:
        raise ValueError(f"theory.check_timesteps {bad} outside 1..T = {schedule.T}")
    from diffusion_report.io import make_generator

    timesteps = sorted(int(t) for t in timesteps)
    checks = exact_checks(schedule, timesteps, make_generator(seed, "theory/exact"))
    checks += monte_carlo_checks(schedule, timesteps, mc_samples, make_generator(seed, "theory/chain"))
    checks += mse_checks_chain(schedule, timesteps, make_generator(seed, "theory/mse"))
    checks += ddim_exact_checks(schedule, timesteps, make_generator(seed, "theory/ddim-exact"))
    checks += ddim_monte_carlo_checks(schedule, timesteps, mc_samples, make_generator(seed, "theory/ddim-mc"))
    if forward_mse is not None and forward_x0 is not None:
        checks += mse_checks_forward(forward_mse, forward_x0, schedule, timesteps)
    return pd.DataFrame([c.row() for c in checks], columns=COLUMNS)


def failures(df: pd.DataFrame) -> list[str]:
    """One line per failed row, naming the check, its equation and t."""
    return [f"{r.identity} ({r.equation}) at t={r.t}: measured {r.measured:.6g}, expected {r.expected:.6g}, "
            f"|error| {r.abs_error:.3g} > tolerance {r.tolerance:.3g} [{r.method}]"
            for r in df.itertuples() if not r.passed]


def assert_checks_passed(df: pd.DataFrame) -> None:
    lines = failures(df)
    if lines:
        raise CheckFailed(f"{len(lines)} of {len(df)} theory checks failed:\n  " + "\n  ".join(lines))


def check_parameters(schedule: Schedule, schedule_cfg: dict, theory_cfg: dict) -> dict:
    """What the checks ran with, for the report: tolerances, eta values, the schedule's abar_T."""
    return {"z_score": Z_SCORE, "exact_ulps": ULPS, "ddim_etas": list(DDIM_ETAS),
            "mc_samples": int(theory_cfg["mc_samples"]), "schedule": dict(schedule_cfg),
            "alpha_bar_T": float(schedule.alpha_bars[-1])}


def theory_checks(schedule_cfg: dict, theory_cfg: dict, seed: int, out_csv: str,
                 mse_csv: str | None = None, x0_path: str | None = None, out_json: str | None = None) -> pd.DataFrame:
    """Rule theory_checks: run every check, log the table, write the CSV (and the parameters the
    checks ran with, as JSON) only if all pass."""
    from diffusion_report.io import write_csv, write_text

    schedule = Schedule.from_config(schedule_cfg)
    fwd_mse = fwd_x0 = None
    if mse_csv and x0_path:
        from diffusion_report.stages.forward import load_clean

        fwd_mse = pd.read_csv(mse_csv)
        fwd_x0, _ = load_clean(x0_path)
    df = run_checks(schedule, list(theory_cfg["check_timesteps"]), int(theory_cfg["mc_samples"]), int(seed), fwd_mse, fwd_x0)
    log.info("theory checks:\n%s", df.to_string(index=False))
    assert_checks_passed(df)
    write_csv(out_csv, df, float_format="%.10g")
    if out_json:
        write_text(out_json, json.dumps(check_parameters(schedule, schedule_cfg, theory_cfg), indent=1, sort_keys=True) + "\n")
    return df
