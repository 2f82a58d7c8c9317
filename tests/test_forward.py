import pytest
import torch

from diffusion_report.core import forward
from diffusion_report.core.schedules import Schedule
from diffusion_report.images import load_images

DEFAULT_IMAGES = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left"]


@pytest.fixture(scope="module")
def schedule():
    return Schedule.make("linear", 1000)


@pytest.fixture(scope="module")
def x0():
    return load_images(DEFAULT_IMAGES, 64)


def test_t0_returns_x0_exactly(schedule, x0):
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(forward.q_sample(x0, 0, noise, schedule), x0)


def test_q_sample_moments_match_closed_form(schedule):
    g = torch.Generator().manual_seed(1)
    x0 = torch.tensor([0.7, -0.3], dtype=torch.float64)
    n = 200_000
    for t in (10, 300, 1000):
        xt = forward.q_sample(x0, t, torch.randn(n, 2, generator=g, dtype=torch.float64), schedule)
        ab = float(schedule.alpha_bars[t])
        se_mean = ((1 - ab) / n) ** 0.5
        assert torch.allclose(xt.mean(0), ab**0.5 * x0, atol=5 * se_mean)
        assert torch.allclose(xt.var(0), torch.full((2,), 1 - ab, dtype=torch.float64), rtol=0.02)


def test_per_sample_timesteps_broadcast(schedule):
    x0 = torch.ones(3, 1, 2, 2)
    noise = torch.zeros_like(x0)
    t = torch.tensor([0, 10, 1000])
    out = forward.q_sample(x0, t, noise, schedule)
    for i in range(3):
        assert torch.allclose(out[i], schedule.alpha_bars[t[i]].sqrt().float() * x0[i])


def test_sequential_chain_matches_closed_form_in_mean_and_variance():
    s = Schedule.make("linear", 200, 1e-3, 0.05)
    g = torch.Generator().manual_seed(2)
    n, t = 50_000, 60
    x0 = torch.full((n,), 0.8, dtype=torch.float64)
    chain = forward.q_sample_chain(x0, t, s, g)
    ab = float(s.alpha_bars[t])
    assert chain.mean().item() == pytest.approx(ab**0.5 * 0.8, abs=5 * ((1 - ab) / n) ** 0.5)
    assert chain.var().item() == pytest.approx(1 - ab, rel=0.03)
    # one q_step is eq. 2 exactly
    x = torch.tensor([0.5], dtype=torch.float64)
    e = torch.tensor([1.0], dtype=torch.float64)
    b = float(s.betas[1])
    assert forward.q_step(x, 1, e, s).item() == pytest.approx((1 - b) ** 0.5 * 0.5 + b**0.5)


def test_empirical_mse_within_two_percent_of_expected_on_default_images(schedule):
    x0 = load_images(DEFAULT_IMAGES, 128)
    measured = forward.mse_per_timestep(x0, 500, schedule, seed=0)
    expected = forward.expected_mse(x0, schedule.alpha_bars[:501])
    # the mean over the five images is within 2% of its expectation at every t >= 10
    rel_mean = (measured[10:].mean(1) - expected[10:].mean(1)).abs() / expected[10:].mean(1)
    assert float(rel_mean.max()) < 0.02
    # each image within 5 standard errors: Var[mean(eps^2)] = 2/n, scaled by (1 - abar_t)
    n = x0[0].numel()
    se = (1 - schedule.alpha_bars[10:501]).unsqueeze(1) * (2 / n) ** 0.5
    assert bool(((measured[10:] - expected[10:]).abs() < 5 * se + 1e-6).all())
    assert torch.equal(measured[0], torch.zeros(5, dtype=torch.float64))


def test_mse_table_is_vectorised_correctly_and_thread_independent(schedule, x0):
    a = forward.mse_per_timestep(x0[:2], 40, schedule, seed=3, workers=1)
    b = forward.mse_per_timestep(x0[:2], 40, schedule, seed=3, workers=3)
    assert torch.equal(a, b)  # the same bytes however the draws are scheduled
    # against the obvious per-timestep loop with the same noise
    for t in (0, 13, 40):
        xt = forward.q_sample(x0[:2], t, forward.timestep_noise(tuple(x0[:2].shape), t, 3), schedule)
        loop = (xt - x0[:2]).pow(2).flatten(1).mean(1).double()
        assert torch.allclose(a[t], loop, rtol=1e-5)


def test_grid_noise_equals_table_noise(schedule, x0):
    xt = forward.noisy_images(x0[:1], [50], schedule, seed=5)[0]
    mse = forward.mse_per_timestep(x0[:1], 50, schedule, seed=5)[50, 0]
    assert float((xt - x0[:1]).pow(2).mean()) == pytest.approx(float(mse), rel=1e-5)


def test_expected_mse_formula():
    x0 = torch.full((1, 3, 2, 2), 0.5)
    ab = torch.tensor([1.0, 0.25, 0.0], dtype=torch.float64)
    e = forward.expected_mse(x0, ab)[:, 0]
    assert e.tolist() == pytest.approx([0.0, 0.25 * 0.25 + 0.75, 0.25 + 1.0])


def test_mse_table_columns(schedule, x0):
    df = forward.mse_table(x0[:2], ["a", "b"], 5, schedule, seed=0)
    assert list(df.columns) == ["t", "a", "b", "mean", "expected_a", "expected_b", "expected_mean"]
    assert df["t"].tolist() == list(range(6))
    assert df["mean"].tolist() == pytest.approx(((df["a"] + df["b"]) / 2).tolist())


def test_mse_plots_show_points_as_points_and_expectations_on_top():
    """The shown timesteps are markers without connecting lines (a line from t = 100 to 500 would
    suggest the values between), and the dashed closed-form curves lie above the measured ones."""
    import numpy as np

    from diffusion_report import figures

    fig = figures.line_plot(np.array([0, 10, 100, 500]), {"a": np.arange(4.0)}, "t", "mse", connect=False, xticks=[0, 10, 100, 500])
    (line,) = fig.axes[0].lines
    assert line.get_linestyle() == "None" and line.get_marker() == "o"
    assert list(fig.axes[0].get_xticks()) == [0, 10, 100, 500]
    figures.close(fig)
    fig = figures.line_plot(np.arange(5), {"a": np.arange(5.0)}, "t", "mse", dashed={"E[a]": np.arange(5.0)})
    solid, dashed = fig.axes[0].lines
    assert dashed.get_zorder() > solid.get_zorder() and dashed.get_linewidth() > solid.get_linewidth()
    figures.close(fig)
