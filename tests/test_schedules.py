import math

import pytest
import torch

from diffusion_report.core.schedules import (
    Schedule,
    from_diffusers_timestep,
    make_betas,
    to_diffusers_timestep,
)


@pytest.mark.parametrize("kind", ["linear", "cosine", "quadratic", "sigmoid"])
def test_alpha_bar_starts_at_one_and_decreases(kind):
    s = Schedule.make(kind, 1000)
    assert s.T == 1000 and s.betas.shape == (1001,)
    assert s.alpha_bars[0] == 1.0 and s.betas[0] == 0.0
    assert bool((s.alpha_bars[1:] < s.alpha_bars[:-1]).all())
    assert bool(((s.betas[1:] > 0) & (s.betas[1:] < 1)).all())


def test_alpha_bar_is_the_product_of_one_minus_beta():
    s = Schedule.make("linear", 50)
    for t in (1, 7, 50):
        expected = math.prod(1 - float(b) for b in s.betas[1 : t + 1])
        assert float(s.alpha_bars[t]) == pytest.approx(expected, rel=1e-12)


def test_linear_and_quadratic_formulas():
    lin = make_betas("linear", 1000, 1e-4, 0.02)
    assert float(lin[0]) == pytest.approx(1e-4) and float(lin[-1]) == pytest.approx(0.02)
    assert float(lin[1] - lin[0]) == pytest.approx((0.02 - 1e-4) / 999)
    quad = make_betas("quadratic", 10, 1e-4, 0.02)
    root = torch.linspace(1e-2, 0.02**0.5, 10, dtype=torch.float64)
    assert torch.allclose(quad, root**2)


def test_sigmoid_is_monotone_between_bounds():
    b = make_betas("sigmoid", 100, 1e-4, 0.02)
    assert bool((b[1:] > b[:-1]).all())
    assert 1e-4 < float(b[0]) < float(b[-1]) < 0.02
    assert float(b[49] + b[50]) / 2 == pytest.approx((1e-4 + 0.02) / 2, rel=1e-6)


def test_cosine_matches_improved_ddpm_formula_and_diffusers():
    from diffusers import DDPMScheduler

    T = 1000
    s = Schedule.make("cosine", T)
    f = lambda t: math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (1, 100, 500, 900):
        assert float(s.alpha_bars[t]) == pytest.approx(f(t) / f(0), rel=1e-9)
    ref = DDPMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2")
    assert torch.allclose(s.betas[1:].float(), ref.betas, atol=1e-6)
    # diffusers indexes from 0 with one step of noise applied: its k is our t = k + 1
    assert float(ref.alphas_cumprod[0]) == pytest.approx(float(s.alpha_bars[1]), rel=1e-5)
    assert to_diffusers_timestep(1) == 0 and from_diffusers_timestep(999) == 1000


def test_linear_matches_diffusers():
    from diffusers import DDPMScheduler

    s = Schedule.make("linear", 1000)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    assert torch.allclose(s.alpha_bars[1:].float(), ref.alphas_cumprod, rtol=1e-5)


def test_invalid_betas_are_rejected():
    with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
        make_betas("cosin", 10)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        Schedule.from_betas(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match="t = 0 is the clean image"):
        to_diffusers_timestep(0)
