"""DDIM stage: the sampler against diffusers, determinism, fixed x_T, timestep selection, errors."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffusion_report import io, metrics
from diffusion_report.core import samplers
from diffusion_report.core.schedules import Schedule
from diffusion_report.io import sha256_file
from diffusion_report.models import ddpm
from diffusion_report.models.loading import ModelNotFoundError, autocast, native_bf16, resolve_precision
from diffusion_report.report.sections import ddim as ddim_section
from diffusion_report.stages import ddim as ddim_stage
from diffusion_report.stages import ddim_cells
from diffusion_report.testing import tiny_unet_config

ROOT_TEMPLATES = __import__("pathlib").Path(__file__).resolve().parents[1] / "report" / "templates"
T_TINY = 50  # abar_T ~ 0.6: the random UNet's x0_hat stays O(1), so 1e-5 is a meaningful bound


@pytest.fixture(scope="module")
def unet():
    return ddpm.build_unet(tiny_unet_config(), seed=123).eval()


@pytest.fixture(scope="module")
def x_T():
    return torch.randn((3, 1, 8, 8), generator=torch.Generator().manual_seed(7))


def schedule_of(sched) -> Schedule:
    """Our schedule with exactly the scheduler's (float32) alpha_bars, so only the updates differ.

    diffusers takes beta_t = 1 - abar_t / abar_{t-1} from float32 cumulative products, which
    differs from the configured beta_t by up to ~1e-3 relative for small betas.
    """
    ab = torch.cat([torch.ones(1, dtype=torch.float64), sched.alphas_cumprod.double()])
    return Schedule.from_betas(1.0 - ab[1:] / ab[:-1])


def diffusers_ddim(unet, x_T, sched, steps, eta=0.0, seed=None):
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    x = x_T.clone()
    with torch.no_grad():
        for k in sched.timesteps:
            x = sched.step(unet(x, k).sample, k, x, eta=eta, generator=gen).prev_sample
    return x


@pytest.mark.parametrize("steps", [10, T_TINY])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_matches_diffusers(unet, x_T, steps, clip):
    sched = DDIMScheduler(num_train_timesteps=T_TINY, clip_sample=clip)  # "leading" spacing, alpha_0 = 1
    schedule = Schedule.from_betas(sched.betas.double())
    ours = samplers.ddim_sample(unet, x_T, schedule, steps, clip_sample=clip)
    ref = diffusers_ddim(unet, x_T, sched, steps)
    assert ours.abs().max() > 0.1  # not a trivial output
    assert (ours - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("steps", [10, T_TINY])
def test_ddim_eta1_matches_diffusers(unet, x_T, steps):
    sched = DDIMScheduler(num_train_timesteps=T_TINY, clip_sample=False)
    schedule = Schedule.from_betas(sched.betas.double())
    ours = samplers.ddim_sample(unet, x_T, schedule, steps, eta=1.0, generator=torch.Generator().manual_seed(5))
    ref = diffusers_ddim(unet, x_T, sched, steps, eta=1.0, seed=5)
    assert (ours - ref).abs().max().item() <= 1e-5


def test_ddpm_matches_diffusers_and_ddim_eta1(unet, x_T):
    # float64 throughout: diffusers' DDPM step takes beta_t = 1 - abar_t / abar_{t-1} from its
    # alphas_cumprod, which in float32 is off by ~1e-3 relative for small betas
    import copy

    unet64, x64 = copy.deepcopy(unet).double(), x_T.double()
    sched = DDPMScheduler(num_train_timesteps=T_TINY, clip_sample=False)  # fixed_small variance
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    schedule = schedule_of(sched)
    gen = torch.Generator().manual_seed(11)
    x = x64.clone()
    with torch.no_grad():
        for k in sched.timesteps:
            x = sched.step(unet64(x, k).sample, k, x, generator=gen).prev_sample
    ours = samplers.ddpm_sample(unet64, x64, schedule, generator=torch.Generator().manual_seed(11))
    assert (ours - x).abs().max().item() <= 1e-5
    # DDIM with eta = 1 over all T steps is DDPM (DDIM paper, sec. 4.1): same noise, same result
    ddim_all = samplers.ddim_sample(unet64, x64, schedule, T_TINY, eta=1.0, generator=torch.Generator().manual_seed(11))
    assert (ours - ddim_all).abs().max().item() <= 1e-5
    # and the noise matters: eta = 0 lands elsewhere
    assert (ours - samplers.ddim_sample(unet64, x64, schedule, T_TINY)).abs().max().item() > 1e-2


def test_uniform_timesteps_are_diffusers_leading_plus_one():
    for T, S in [(1000, 10), (1000, 50), (1000, 1000), (100, 7)]:
        sched = DDIMScheduler(num_train_timesteps=T)
        sched.set_timesteps(S)
        assert samplers.select_timesteps(S, T, "uniform") == (sched.timesteps + 1).tolist()
    ts = samplers.select_timesteps(1000, 1000, "uniform")
    assert ts[0] == 1000 and ts[-1] == 1


def test_quadratic_timesteps():
    ts = samplers.select_timesteps(10, 1000, "quadratic")
    # ermongroup/ddim: seq = [int(s) for s in np.linspace(0, sqrt(0.8 T), S) ** 2], shifted to t = k + 1
    expected = [int(s) + 1 for s in np.linspace(0, math.sqrt(800), 10) ** 2][::-1]
    assert ts == expected
    assert ts[-1] == 1 and ts[0] == 801
    gaps = -np.diff(ts)
    assert np.all(gaps > 0) and gaps[0] > gaps[-1]  # dense near t = 1, sparse near T
    many = samplers.select_timesteps(500, 1000, "quadratic")
    assert len(many) == len(set(many)) and len(many) < 500  # duplicates near t = 1 removed


def test_step_count_above_T_is_an_error(unet, x_T):
    with pytest.raises(ValueError, match="ddim.step_counts"):
        samplers.select_timesteps(1001, 1000)
    with pytest.raises(ValueError, match=r"ddim.step_counts.*\[200\]"):
        samplers.check_step_counts([10, 200], T_TINY)
    with pytest.raises(ValueError, match="ddim.skip_type"):
        samplers.select_timesteps(10, 1000, "cubic")


def test_eta0_is_deterministic(unet, x_T):
    schedule = Schedule.make("linear", T_TINY)
    a = samplers.ddim_sample(unet, x_T, schedule, 20)
    b = samplers.ddim_sample(unet, x_T, schedule, 20)
    assert a.numpy().tobytes() == b.numpy().tobytes()


# --------------------------------------------------------------------------------------------
# rule-level: x_T artifact, sampling files, figures, report context
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, unet):
    d = tmp_path_factory.mktemp("ddim") / "model"
    unet.save_pretrained(d, safe_serialization=True)
    ddpm.ddpm_scheduler({"kind": "linear", "T": T_TINY, "beta_start": 1e-4, "beta_end": 0.02}).save_pretrained(d)
    return d


def stage_config(model_dir, step_counts=(5, 20, T_TINY)) -> dict:
    return {
        "seed": 3,
        "device": "cpu",
        "ddim": {
            "model": {"source": "pretrained", "pretrained": str(model_dir)},
            "step_counts": list(step_counts),
            "num_samples": 3,
            "eta": 0.0,
            "skip_type": "uniform",
            "clip_sample": False,
            "ddpm_baseline": True,
        },
    }


def draw_x_T(path, cfg) -> None:
    """Rule ddim_x_T with the values its params give."""
    d = cfg["ddim"]
    ddim_stage.ddim_x_T(path, d["model"]["pretrained"], num_samples=d["num_samples"], step_counts=d["step_counts"], seed=cfg["seed"])


def sample(x_T, out, timing, cfg, **kw) -> None:
    """Rules ddim_sample / ddim_ddpm_baseline with the values their params give."""
    ddim_stage.ddim_sample(x_T, out, timing, cfg["ddim"]["model"]["pretrained"], cfg["ddim"], seed=cfg["seed"],
                            device=cfg["device"], **kw)


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory, model_dir):
    out = tmp_path_factory.mktemp("stage")
    cfg = stage_config(model_dir)
    draw_x_T(out / "x_T.safetensors", cfg)
    labels = [f"ddim_{s}" for s in cfg["ddim"]["step_counts"]] + ["ddpm"]
    for lab in labels:
        kw = {"sampler": "ddpm"} if lab == "ddpm" else {"sampler": "ddim", "num_steps": int(lab.split("_")[1])}
        sample(out / "x_T.safetensors", out / f"{lab}.safetensors", out / f"{lab}.json", cfg, **kw)
    return out, cfg, labels


def test_same_x_T_for_every_step_count(stage_run, model_dir):
    out, cfg, labels = stage_run
    x_T, _ = io.load_tensor(out / "x_T.safetensors")
    assert tuple(x_T.shape) == (3, 1, 8, 8)
    hashes = {io.load_tensor(out / f"{lab}.safetensors")[1]["x_T_sha256"] for lab in labels}
    assert hashes == {io.tensor_sha256(x_T)}
    # and the saved samples are what the sampler gives from exactly that x_T (through another model
    # instance than the stage's: equal up to float32 rounding, which is not bit-stable across instances)
    unet, schedule, _ = ddpm.load_model(str(model_dir))
    x5, meta = io.load_tensor(out / "ddim_5.safetensors")
    assert meta["steps"] == 5 and meta["nfe"] == 5
    torch.testing.assert_close(x5, samplers.ddim_sample(unet, x_T, schedule, 5), rtol=0, atol=1e-5)
    # a second draw is reproducible from the seed, and a different seed gives a different x_T
    assert torch.equal(ddim_stage.make_x_T(x_T.shape, 3), x_T)
    assert not torch.equal(ddim_stage.make_x_T(x_T.shape, 4), x_T)


def test_sampling_files_are_byte_identical_on_rerun(stage_run, tmp_path):
    out, cfg, _ = stage_run
    sample(out / "x_T.safetensors", tmp_path / "again.safetensors", tmp_path / "again.json", cfg,
           sampler="ddim", num_steps=20)
    assert sha256_file(tmp_path / "again.safetensors") == sha256_file(out / "ddim_20.safetensors")
    draw_x_T(tmp_path / "x_T.safetensors", cfg)
    assert sha256_file(tmp_path / "x_T.safetensors") == sha256_file(out / "x_T.safetensors")


def test_pretrained_step_count_above_T_names_the_key(model_dir, tmp_path):
    cfg = stage_config(model_dir, step_counts=(10, 1000))
    with pytest.raises(ValueError, match="ddim.step_counts"):
        draw_x_T(tmp_path / "x_T.safetensors", cfg)
    assert not (tmp_path / "x_T.safetensors").exists()


def test_figures_metrics_and_report_context(stage_run, tmp_path):
    out, cfg, labels = stage_run
    files = {
        "grid": str(tmp_path / "grid.png"), "convergence": str(tmp_path / "conv.png"),
        "metrics": str(tmp_path / "metrics.csv"), "timing": str(tmp_path / "timing.csv"),
    }
    ddim_stage.ddim_figures({lab: str(out / f"{lab}.safetensors") for lab in labels},
                     {lab: str(out / f"{lab}.json") for lab in labels},
                     grid_png=files["grid"], convergence_png=files["convergence"], metrics_csv=files["metrics"],
                     timing_csv=files["timing"], png_dir=str(tmp_path / "png"), seed=cfg["seed"])
    import pandas as pd

    m = pd.read_csv(files["metrics"]).set_index("label")
    assert list(m.index) == labels
    assert m.loc[f"ddim_{T_TINY}", "mse"] == 0 and m.loc[f"ddim_{T_TINY}", "ssim"] == 1
    x5, ref = io.load_tensor(out / "ddim_5.safetensors")[0], io.load_tensor(out / f"ddim_{T_TINY}.safetensors")[0]
    d = metrics.pairwise(x5, ref)
    assert m.loc["ddim_5", "mse"] == pytest.approx(d["mse"].mean(), rel=1e-6) and m.loc["ddim_5", "mse"] > 0
    assert m.loc["ddim_5", "ssim"] == pytest.approx(d["ssim"].mean(), rel=1e-6) and m.loc["ddim_5", "ssim"] < 1
    assert len(list((tmp_path / "png").glob("*.png"))) == 3 * len(labels)
    ctx = ddim_section.report_context(files, {**cfg, "ddim": {**cfg["ddim"], "model": cfg["ddim"]["model"]}})
    assert ctx["reference_steps"] == T_TINY and ctx["fewest_steps"] == 5
    assert ctx["fewest_mse"] == pytest.approx(m.loc["ddim_5", "mse"])
    assert ctx["ddpm"]["steps"] == T_TINY
    assert len(ctx["rows"]) == len(labels)
    t = json.loads((out / "ddim_5.json").read_text())
    assert t["wall_s"] > 0 and t["nfe"] == 5
    # the section template renders with the report's environment (autoescape, StrictUndefined)
    from pathlib import Path

    from diffusion_report.report import render as report

    env = report.environment(Path(__file__).resolve().parents[1] / "report" / "templates")
    html = env.get_template("sections/ddim.html.j2").render(ctx=ctx, config=cfg)
    assert '<section id="ddim">' in html and "data:image/png;base64" in html
    assert "new x<sub>T</sub> for each step count" in html and "not clipped" in html
    assert report.fmt(ctx["fewest_ssim"], 3) in html
    # samples with a pixel beyond the bound, counted per step count; the sentence names the most
    bound = ddim_cells.PIXEL_BOUND
    for lab in labels:
        x = io.load_tensor(out / f"{lab}.safetensors")[0]
        assert m.loc[lab, "outside_bound"] == int((x.flatten(1).abs().amax(1) > bound).sum())
    plain = " ".join(html.split())
    assert "steps, and." not in plain
    assert ("steps, and DDPM's ancestral sampler" in plain) == bool(ctx["ddpm"])
    over = dict(ctx, max_abs_pixel=3.2, outside_bound=1, num_samples=768)
    text = " ".join(env.get_template("sections/ddim.html.j2").render(ctx=over, config=cfg).split())
    assert "those samples are not digits (1 of the 768 samples at the step count with the most)." in text
    no_ddpm = " ".join(env.get_template("sections/ddim.html.j2").render(ctx=dict(ctx, ddpm=None), config=cfg).split())
    assert "steps, and" not in no_ddpm.split("Timesteps:")[0] and "steps. Timesteps:" in no_ddpm


def test_figures_with_one_step_count_and_no_baseline(stage_run, tmp_path):
    """``ddim.step_counts`` may hold one S (schema: minItems 1): the only run is its own reference (distance 0),
    which a log axis cannot show; the figures and the table are still written."""
    out, cfg, labels = stage_run
    lab = labels[0]
    files = {"grid": tmp_path / "grid.png", "convergence": tmp_path / "conv.png", "metrics": tmp_path / "metrics.csv",
             "timing": tmp_path / "timing.csv"}
    ddim_stage.ddim_figures({lab: str(out / f"{lab}.safetensors")}, {lab: str(out / f"{lab}.json")},
                            grid_png=str(files["grid"]), convergence_png=str(files["convergence"]),
                            metrics_csv=str(files["metrics"]), timing_csv=str(files["timing"]),
                            png_dir=str(tmp_path / "png"), seed=cfg["seed"])
    import pandas as pd

    m = pd.read_csv(files["metrics"])
    assert list(m["label"]) == [lab] and m["mse"].iloc[0] == 0 and m["reference"].iloc[0] == lab
    assert files["convergence"].stat().st_size > 0 and files["grid"].stat().st_size > 0


def test_missing_model_error_names_id_and_fix(monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True, raising=False)
    try:
        import diffusers.utils.constants as dc

        monkeypatch.setattr(dc, "HF_HUB_OFFLINE", True, raising=False)
    except ImportError:
        pass
    with pytest.raises(ModelNotFoundError) as err:
        ddpm.load_model("no-such-org/no-such-ddpm")
    msg = str(err.value)
    assert "no-such-org/no-such-ddpm" in msg
    assert "ddim.model.pretrained" in msg
    assert "hf download" in msg and "HF_HUB_OFFLINE" in msg
    # the config-file reader of rule ddim_x_T says the same, without importing diffusers
    with pytest.raises(ModelNotFoundError, match="ddim.model.pretrained.*hf download"):
        ddpm.image_shape_and_T("no-such-org/no-such-ddpm")


def test_x_T_shape_and_T_read_from_the_config_files_match_the_loaded_model(model_dir, tmp_path):
    unet, schedule, _ = ddpm.load_model(str(model_dir))
    assert ddpm.image_shape_and_T(str(model_dir)) == (ddpm.image_shape(unet), schedule.T)
    # the pipeline layout: scheduler config in scheduler/
    import shutil

    shutil.copytree(model_dir, tmp_path / "m")
    (tmp_path / "m" / "scheduler").mkdir()
    (tmp_path / "m" / "scheduler_config.json").rename(tmp_path / "m" / "scheduler" / "scheduler_config.json")
    assert ddpm.image_shape_and_T(str(tmp_path / "m")) == ((1, 8, 8), schedule.T)
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        ddpm.image_shape_and_T(str(tmp_path / "m"))


def test_image_metrics():
    a = torch.zeros(1, 8, 8)
    b = torch.full((1, 8, 8), 0.2)  # 0.1 apart in [0, 1] units
    assert metrics.mse(a, b) == pytest.approx(0.01)
    assert metrics.psnr(a, b) == pytest.approx(20.0)
    assert metrics.psnr(a, a) == math.inf and metrics.ssim(a, a) == pytest.approx(1.0)
    noise = torch.randn((3, 16, 16), generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    img = torch.linspace(-1, 1, 16).view(1, 1, 16).expand(3, 16, 16)
    assert metrics.ssim(img, noise) < 0.5 < metrics.ssim(img, (img + 0.05 * noise).clamp(-1, 1))


# ------------------------------------------------------------------------------------------
# the noise: one Brownian path shared across step counts (common random numbers)
# ------------------------------------------------------------------------------------------
def test_brownian_noise_is_standard_normal_and_independent_per_step():
    """Each z of a strided chain is N(0, 1) (mean, variance) and uncorrelated with the chain's
    other steps, whatever the stride: the sampler's law is not changed by sharing the path."""
    T, shape = 100, (20000,)
    ts = [100, 73, 70, 41, 40, 1, 0]  # strides 27, 3, 29, 1, 39, 1
    noise = samplers.BrownianNoise(torch.Generator().manual_seed(0), T, shape, dtype=torch.float64)
    zs = torch.stack([noise(t, tp) for t, tp in zip(ts, ts[1:])])
    assert zs.mean(1).abs().max() < 0.03  # 4 sigma of a mean of 20000 N(0, 1)
    assert (zs.var(1) - 1).abs().max() < 0.05
    corr = torch.corrcoef(zs)
    off = corr - torch.eye(len(zs), dtype=corr.dtype)
    assert off.abs().max() < 0.04


def test_brownian_noise_coarse_step_is_the_sum_of_fine_steps():
    """A coarse step's z * sqrt(stride) is the sum of the fine steps' z * sqrt(their strides) on
    the same path: the property that couples samplers with different S; a path started at a
    lower t is the same path (increments above it are drawn and dropped)."""
    T, shape = 40, (3, 1, 4, 4)
    fine_ts = list(range(37, -1, -1))
    fine = samplers.BrownianNoise(torch.Generator().manual_seed(5), T, shape, dtype=torch.float64)
    fine_z = {t: fine(t, t - 1) for t in fine_ts[:-1]}
    coarse = samplers.BrownianNoise(torch.Generator().manual_seed(5), T, shape, dtype=torch.float64)
    for t, tp in ((37, 30), (30, 29), (29, 10), (10, 0)):
        want = sum(fine_z[k] for k in range(t, tp, -1)) / math.sqrt(t - tp)
        torch.testing.assert_close(coarse(t, tp), want, atol=1e-12, rtol=0)
    assert coarse(10, 0) is coarse(10, 0)  # the last step asked again: the same z (samplers side by side)
    with pytest.raises(ValueError, match="out of order"):
        coarse(5, 3)  # the path is at t = 0 now
    # rows: a batch's slice of the full-shape draws
    part = samplers.BrownianNoise(torch.Generator().manual_seed(5), T, shape, dtype=torch.float64, rows=slice(1, 3))
    torch.testing.assert_close(part(37, 30), (sum(fine_z[k] for k in range(37, 30, -1)) / math.sqrt(7))[1:3])


def test_brownian_noise_at_S_equal_T_is_the_generators_draws(unet, x_T):
    """At S = T the path's increments are the generator's draws in order: DDPM and DDIM (eta = 1)
    on a BrownianNoise give the bytes of the same samplers drawing from the generator."""
    schedule = Schedule.from_betas(DDIMScheduler(num_train_timesteps=T_TINY).betas.double())

    def path():
        return samplers.BrownianNoise(torch.Generator().manual_seed(11), T_TINY, x_T.shape)

    ddpm_gen = samplers.ddpm_sample(unet, x_T, schedule, generator=torch.Generator().manual_seed(11))
    assert torch.equal(samplers.ddpm_sample(unet, x_T, schedule, noise_sampler=path()), ddpm_gen)
    ddim_gen = samplers.ddim_sample(unet, x_T, schedule, T_TINY, eta=1.0, generator=torch.Generator().manual_seed(11))
    assert torch.equal(samplers.ddim_sample(unet, x_T, schedule, T_TINY, eta=1.0, noise_sampler=path()), ddim_gen)


def test_brownian_noise_couples_step_counts(unet, x_T):
    """The point of the shared path: eta = 1 samples at S = 25 and S = T land much closer to each
    other on one path than with independent draws per S (computed, both ways)."""
    schedule = Schedule.from_betas(DDIMScheduler(num_train_timesteps=T_TINY).betas.double())

    def run(S, noise):
        return samplers.ddim_sample(unet, x_T, schedule, S, eta=1.0, noise_sampler=noise)

    shared = [run(S, samplers.BrownianNoise(torch.Generator().manual_seed(1), T_TINY, x_T.shape)) for S in (25, T_TINY)]
    indep = [run(S, samplers.independent_noise(torch.Generator().manual_seed(S), x_T.shape)) for S in (25, T_TINY)]
    d_shared = float((shared[0] - shared[1]).pow(2).mean())
    d_indep = float((indep[0] - indep[1]).pow(2).mean())
    assert d_shared < 0.25 * d_indep, (d_shared, d_indep)


def test_stage_noise_does_not_depend_on_the_batch_size(model_dir, tmp_path):
    """ddim_sample at eta > 0 and the DDPM baseline take row i's noise from row i of the stage's
    path, so splitting x_T into batches changes nothing beyond float rounding."""
    x_T_path = tmp_path / "x_T.safetensors"
    ddim_stage.ddim_x_T(x_T_path, str(model_dir), num_samples=5, step_counts=[4], seed=2)
    out = {}
    for sampler in ("ddim", "ddpm"):
        for bs in (None, 2):
            dcfg = {"eta": 0.7, "skip_type": "uniform", "clip_sample": False, "batch_size": bs, "precision": "float32"}
            path = tmp_path / f"{sampler}_{bs}.safetensors"
            ddim_stage.ddim_sample(x_T_path, path, tmp_path / f"{sampler}_{bs}.json", str(model_dir), dcfg, seed=2,
                                   device="cpu", sampler=sampler, num_steps=4 if sampler == "ddim" else None)
            out[(sampler, bs)] = io.load_tensor(path)[0]
        torch.testing.assert_close(out[(sampler, None)], out[(sampler, 2)], atol=1e-5, rtol=0)
    assert (out[("ddim", None)] - out[("ddpm", None)]).abs().max() > 1e-2  # two samplers, not one


# DDIM paper experiments: Table 1 variants, inversion (Table 2), interpolation (Figure 6)
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [5, T_TINY])
def test_sample_variants_match_diffusers(unet, x_T, steps):
    """eta rows against DDIMScheduler(eta); sigma_hat against DDPMScheduler(variance_type="fixed_large")
    on the same strided timesteps (float64, so diffusers' float32 betas do not blur the comparison)."""
    import copy

    unet64, x64 = copy.deepcopy(unet).double(), x_T.double()
    out = {}
    for eta in (0.0, 0.5, 1.0):
        sched = DDIMScheduler(num_train_timesteps=T_TINY, clip_sample=False)
        sched.alphas_cumprod = sched.alphas_cumprod.double()
        ref = diffusers_ddim(unet64, x64, sched, steps, eta=eta, seed=3)
        schedule = schedule_of(sched)
        noise = {f"eta={eta}": samplers.independent_noise(torch.Generator().manual_seed(3), x64.shape, x64.dtype)}
        got = samplers.sample_variants(unet64, x64, schedule, steps, [f"eta={eta}"], noise=noise)[f"eta={eta}"]
        assert (got - ref).abs().max().item() <= 1e-5, eta
        out[eta] = got
    sched = DDPMScheduler(num_train_timesteps=T_TINY, clip_sample=False, variance_type="fixed_large")
    sched.alphas_cumprod = sched.alphas_cumprod.double()
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(4)
    x = x64.clone()
    with torch.no_grad():
        for k in sched.timesteps:
            x = sched.step(unet64(x, k).sample, k, x, generator=gen).prev_sample
    noise = {"sigma_hat": samplers.independent_noise(torch.Generator().manual_seed(4), x64.shape, x64.dtype)}
    got = samplers.sample_variants(unet64, x64, schedule_of(sched), steps, ["sigma_hat"], noise=noise)["sigma_hat"]
    assert (got - x).abs().max().item() <= 1e-5
    # the variants really differ: eta = 0 is not eta = 1 is not sigma_hat
    assert (out[0.0] - out[1.0]).abs().max() > 1e-2 and (got - out[1.0]).abs().max() > 1e-2


def test_sample_variants_batched_equal_separate(unet, x_T):
    """Stacking variants into one UNet batch changes nothing beyond float rounding."""
    schedule = Schedule.from_betas(DDIMScheduler(num_train_timesteps=T_TINY).betas.double())
    gens = lambda: {v: samplers.BrownianNoise(torch.Generator().manual_seed(2), schedule.T, x_T.shape)  # noqa: E731
                    for v in ("eta=0.0", "sigma_hat")}
    both = samplers.sample_variants(unet, x_T, schedule, 10, ["eta=0.0", "sigma_hat"], noise=gens())
    alone = samplers.sample_variants(unet, x_T, schedule, 10, ["sigma_hat"], noise=gens())
    # one path shared by several stochastic variants gives each the bytes of a path of its own
    variants = ["eta=0.5", "eta=1.0", "sigma_hat"]
    path = samplers.BrownianNoise(torch.Generator().manual_seed(2), schedule.T, x_T.shape)
    shared = samplers.sample_variants(unet, x_T, schedule, 10, variants, noise={v: path for v in variants})
    own = samplers.sample_variants(unet, x_T, schedule, 10, variants, noise={
        v: samplers.BrownianNoise(torch.Generator().manual_seed(2), schedule.T, x_T.shape) for v in variants})
    for v in variants:
        assert torch.equal(shared[v], own[v]), v
    torch.testing.assert_close(both["sigma_hat"], alone["sigma_hat"], atol=1e-5, rtol=0)
    torch.testing.assert_close(both["eta=0.0"], samplers.ddim_sample(unet, x_T, schedule, 10), atol=1e-5, rtol=0)


def test_inversion_round_trip_error_shrinks_with_steps(unet):
    """Encode with the forward ODE, decode with DDIM (eta = 0): the error is discretisation only,
    so it falls as S grows, and at S = T it is small."""
    sched = DDIMScheduler(num_train_timesteps=T_TINY)
    schedule = Schedule.from_betas(sched.betas.double())
    x0 = torch.rand((4, 1, 8, 8), generator=torch.Generator().manual_seed(9)) * 2 - 1
    errs = []
    for S in (2, 5, 10, T_TINY):
        x_T = samplers.ddim_invert(unet, x0, schedule, S)
        rec = samplers.ddim_sample(unet, x_T, schedule, S)
        errs.append(float(((rec - x0) ** 2).mean()))
    assert all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < errs[0] / 5, errs
    # the encoding is not the identity: x_T differs from x_0
    assert (samplers.ddim_invert(unet, x0, schedule, T_TINY) - x0).abs().mean() > 0.05


def test_slerp_endpoints_and_norm():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn((1, 16, 16), generator=g), torch.randn((1, 16, 16), generator=g)
    torch.testing.assert_close(samplers.slerp(z0, z1, 0.0), z0, atol=1e-6, rtol=0)
    torch.testing.assert_close(samplers.slerp(z0, z1, 1.0), z1, atol=1e-6, rtol=0)
    mid = samplers.slerp(z0, z1, 0.5)
    # a linear mix shrinks the norm of two near-orthogonal Gaussians by ~sqrt(2); slerp does not
    assert abs(float(mid.norm()) - float((z0.norm() + z1.norm()) / 2)) < 0.05 * float(z0.norm())
    assert float(((z0 + z1) / 2).norm()) < 0.8 * float(mid.norm())


def test_frechet_distance_against_scipy_and_closed_form():
    from scipy import linalg

    rng = np.random.default_rng(0)
    d = 6
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    c1, c2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    ref = float((m1 - m2) @ (m1 - m2) + np.trace(c1 + c2 - 2 * linalg.sqrtm(c1 @ c2).real))
    assert metrics.frechet_distance(m1, c1, m2, c2) == pytest.approx(ref, rel=1e-8)
    # diagonal covariances: d^2 = |m1 - m2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    s1, s2 = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    exact = float((m1 - m2) @ (m1 - m2) + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum())
    assert metrics.frechet_distance(m1, np.diag(s1), m2, np.diag(s2)) == pytest.approx(exact, rel=1e-10)
    assert metrics.frechet_distance(m1, c1, m1, c1) == pytest.approx(0.0, abs=1e-8)
    # from samples: two large draws of one Gaussian are close, a shifted one is ~|shift|^2 away
    x = rng.normal(size=(4000, d))
    y = rng.normal(size=(4000, d))
    assert metrics.feature_frechet(x, y) < 0.05
    assert metrics.feature_frechet(x, y + 2.0) == pytest.approx(4.0 * d, rel=0.05)


def test_paired_bootstrap_uses_the_given_indices():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(500, 3))
    f = rng.normal(size=(64, 3)) + 0.5
    idx = rng.integers(0, 64, size=(50, 64))
    b1 = metrics.bootstrap_frechet(f, ref, idx)
    b2 = metrics.bootstrap_frechet(f + 0.1, ref, idx)
    assert b1.shape == (50,) and b1.std() > 0
    # same indices: a set shifted by a constant moves every resample the same way
    assert np.all(b2 > b1)
    assert metrics.bootstrap_frechet(f, ref, np.arange(64)[None]) [0] == pytest.approx(metrics.feature_frechet(f, ref))


def _quality_table(fd: dict, err: float = 0.5, conf: float = 0.95, pix: float = 1.0, recog: float = 0.97):
    import pandas as pd

    from diffusion_report.stages.ddim_cells import PAPER_FID

    rows = [{"variant": v, "steps": s, "num_samples": 64, "fd": x, "fd_boot_std": err, "recognisability": recog,
             "confident_fraction": conf, "max_abs_pixel": pix,
             "paper_cifar10_fid": dict(zip((10, 20, 50, 100, 1000), PAPER_FID[v])).get(s)}
            for (v, s), x in fd.items()]
    return pd.DataFrame(rows)


def test_ordering_claims_follow_the_numbers():
    """The paper's ordering (eta = 0 best at few steps, sigma-hat best at 1000) is claimed only when
    the numbers show it beyond twice the bootstrap error; contrary numbers flip the verdict."""
    import pandas as pd

    from diffusion_report.report.sections.ddim import ordering_claims

    paper_like = {("eta=0", 10): 5.0, ("eta=1", 10): 20.0, ("sigma_hat", 10): 90.0,
                  ("eta=0", 1000): 3.0, ("eta=1", 1000): 3.5, ("sigma_hat", 1000): 1.0}
    c = ordering_claims(_quality_table(paper_like))
    assert c["few"]["best"] == "eta=0" and c["few"]["verdict"] == "agrees"
    assert c["many"]["best"] == "sigma_hat" and c["many"]["verdict"] == "agrees"
    contrary = dict(paper_like)
    contrary[("eta=1", 10)] = 1.0  # eta = 1 now wins at 10 steps, far beyond the error
    assert ordering_claims(_quality_table(contrary))["few"]["verdict"] == "differs"
    noisy = dict(paper_like)
    noisy[("eta=1", 10)] = 4.5  # eta = 1 lowest, but within the error of eta = 0: no claim either way
    assert ordering_claims(_quality_table(noisy))["few"]["verdict"] == "tied"
    close = dict(paper_like)
    close[("eta=1", 1000)] = 1.5  # within 2 x sqrt(2) x 0.5 of sigma-hat
    assert ordering_claims(_quality_table(close))["many"]["verdict"] == "tied"
    # with the paired errors of the pairs table (the cells share x_T and the noise path), a
    # difference the quadrature bound cannot resolve is resolved: eta = 1 is below eta = 0
    paired = pd.DataFrame([{"variant": "eta=0 -> eta=1", "steps_from": 10, "steps_to": 10, "fd_change": -0.5,
                            "change_boot_std": 0.1, "neighbours": True}])
    assert ordering_claims(_quality_table(noisy), paired)["few"]["verdict"] == "differs"
    assert ordering_claims(_quality_table(noisy), paired.assign(change_boot_std=0.4))["few"]["verdict"] == "tied"


def test_coupling_gain_is_quadrature_over_paired_error():
    """The report's "n times smaller" sentence: cells' errors in quadrature over the paired error,
    along S, for the stochastic samplers only (eta = 0 and variant pairs do not count)."""
    import pandas as pd

    from diffusion_report.report.sections.ddim import coupling_gain

    df = pd.DataFrame([{"variant": v, "steps": s_, "fd_boot_std": e} for v, s_, e in
                       [("eta=1", 10, 3.0), ("eta=1", 20, 4.0), ("sigma_hat", 10, 6.0), ("sigma_hat", 20, 8.0),
                        ("eta=0", 10, 1.0), ("eta=0", 20, 1.0)]])
    pairs = pd.DataFrame([
        {"variant": "eta=1", "steps_from": 10, "steps_to": 20, "change_boot_std": 1.0},      # 5 / 1
        {"variant": "sigma_hat", "steps_from": 10, "steps_to": 20, "change_boot_std": 5.0},  # 10 / 5
        {"variant": "eta=0", "steps_from": 10, "steps_to": 20, "change_boot_std": 0.01},     # deterministic
        {"variant": "eta=1 -> sigma_hat", "steps_from": 10, "steps_to": 10, "change_boot_std": 0.01},
    ])
    assert coupling_gain(df, pairs) == {"median": 3.5, "min": 2.0, "n": 2}
    # independent cells: the paired error is the quadrature, no gain
    indep = pairs.iloc[:2].assign(change_boot_std=[5.0, 10.0])
    assert coupling_gain(df, indep) == {"median": 1.0, "min": 1.0, "n": 2}
    assert coupling_gain(df, pairs.iloc[2:]) is None


def test_quality_goals_and_neighbour_resolution_flip():
    import pandas as pd

    from diffusion_report.report.sections.ddim import neighbours_resolved, quality_goals

    fd = {("eta=0", 10): 5.0, ("eta=0", 20): 4.0, ("eta=0", 50): 3.9}
    ok = quality_goals(_quality_table(fd), "eta=0", 0.98)
    assert ok["confident_ok"] and ok["recog_ok"] and ok["pixel_ok"]
    bad = quality_goals(_quality_table(fd, conf=0.85, pix=3.0, recog=0.9), "eta=0", 0.98)
    assert not bad["confident_ok"] and not bad["recog_ok"] and not bad["pixel_ok"]
    assert ok["outside"] is None and ok["num_samples"] == 64  # a table from before the count
    counted = quality_goals(_quality_table(fd, pix=3.0).assign(outside_bound=[5, 2, 1]), "eta=0", 0.98)
    assert counted["outside"] == 2  # the most in one cell at S >= 20 (S = 10's 5 is not among them)
    pairs = pd.DataFrame({"fd_change": [-1.0, -0.1], "change_boot_std": [0.2, 0.2]})
    assert neighbours_resolved(pairs) == {"resolved": 1, "total": 2, "factor": 2.0}
    # rows of two variants that are not neighbours in the table are not counted
    pairs["neighbours"] = [True, True]
    far = pd.DataFrame({"fd_change": [-5.0], "change_boot_std": [0.1], "neighbours": [False]})
    assert neighbours_resolved(pd.concat([pairs, far])) == {"resolved": 1, "total": 2, "factor": 2.0}
    # samples for the median unresolved difference to pass 2 std: n (2 std / |change|)^2
    unresolved = pd.DataFrame({"fd_change": [-1.0, 0.5, 2.0, 1.0], "change_boot_std": [0.2, 0.5, 2.0, 1.0],
                               "neighbours": [True] * 4})  # the last three unresolved: n x 4, 4, 4
    assert neighbours_resolved(unresolved, 64)["n_half"] == 256
    unresolved.loc[1, "change_boot_std"] = 1.0  # now 64 x 16 = 1024 for one of them: the median stays 256
    assert neighbours_resolved(unresolved, 64)["n_half"] == 256
    unresolved.loc[2:3, "change_boot_std"] = 1.5  # 64 x 2.25 and 64 x 9 beside 64 x 16: median 576
    assert neighbours_resolved(unresolved, 64)["n_half"] == 576
    assert neighbours_resolved(pairs.iloc[:1], 64)["n_half"] is None  # everything resolved


def test_experiment_rules_and_report_sentences(stage_run, model_dir, tmp_path):
    """The three experiment rules on the tiny model, then the real section template: its
    reconstruction sentence follows the numbers (a contrary table flips it)."""
    import pandas as pd

    from diffusion_report.report import render as report
    from diffusion_report.stages import ddim_experiments

    out, cfg, labels = stage_run
    sampling = {"eta": 0.0, "skip_type": "uniform", "clip_sample": False}
    for S, variants in ((5, ["eta=1", "sigma_hat"]), (10, ["eta=0", "eta=1", "sigma_hat"])):
        ddim_experiments.ddim_quality_samples(str(model_dir), str(out / "x_T.safetensors"), str(tmp_path / f"q{S}.safetensors"), steps=S,
                              variants=variants, sampling=sampling, seed=3, device="cpu")
    q = {"quality_csv": tmp_path / "q.csv", "quality_pairs": tmp_path / "p.csv", "quality_png": tmp_path / "q.png"}
    ddim_experiments.ddim_quality({5: str(tmp_path / "q5.safetensors"), 10: str(tmp_path / "q10.safetensors")},
                        {5: [("eta=0", str(out / "ddim_5.safetensors"))]}, out_csv=q["quality_csv"], pairs_csv=q["quality_pairs"],
                        out_png=q["quality_png"], variants=["eta=0", "eta=1", "sigma_hat"], image_size=8, seed=3, n_boot=20)
    df = pd.read_csv(q["quality_csv"])
    assert len(df) == 3 * 2 + 1 and (df["fd"] >= 0).all() and (df["fd_boot_std"] > 0).all()
    # the reused cell is ddim_sample's file: its score is that of those very samples
    x5 = io.load_tensor(out / "ddim_5.safetensors")[0]
    assert float(df[(df.variant == "eta=0") & (df.steps == 5)]["max_abs_pixel"].iloc[0]) == pytest.approx(float(x5.abs().max()))
    cell = df[(df.variant == "eta=0") & (df.steps == 5)]
    assert int(cell["outside_bound"].iloc[0]) == int((x5.flatten(1).abs().amax(1) > ddim_cells.PIXEL_BOUND).sum())
    assert int(df[df.variant == "real digits"]["outside_bound"].iloc[0]) == 0
    r = {"recon_csv": tmp_path / "r.csv", "recon_png": tmp_path / "r.png"}
    ddim_experiments.ddim_reconstruction(str(model_dir), r["recon_csv"], r["recon_png"], step_counts=[2, 10, T_TINY], num_images=4,
                         sampling=sampling, seed=3, device="cpu")
    rec = pd.read_csv(r["recon_csv"])
    assert list(rec["steps"]) == [2, 10, T_TINY] and rec["mse"].iloc[-1] < rec["mse"].iloc[0]
    ddim_experiments.ddim_interpolation(str(model_dir), str(tmp_path / "i.png"), pairs=1, points=3, steps=5, sampling=sampling, seed=3)
    files = {"grid": str(tmp_path / "g.png"), "convergence": str(tmp_path / "c.png"), "metrics": str(tmp_path / "m.csv"),
             "timing": str(tmp_path / "t.csv")}
    ddim_stage.ddim_figures({lab: str(out / f"{lab}.safetensors") for lab in labels}, {lab: str(out / f"{lab}.json") for lab in labels},
                     grid_png=files["grid"], convergence_png=files["convergence"], metrics_csv=files["metrics"],
                     timing_csv=files["timing"], png_dir=str(tmp_path / "png"), seed=cfg["seed"])
    files.update({k: str(v) for k, v in {**q, **r}.items()}, interp_png=str(tmp_path / "i.png"))
    env = report.environment(ROOT_TEMPLATES)
    html = env.get_template("sections/ddim.html.j2").render(ctx=ddim_section.report_context(files, cfg), config=cfg)
    assert "falls with every added step count" in html and "The DDIM paper's Table 1" in html
    # sampler variants are typeset like the theory section (eta = 0, sigma-hat as SVG math), not eta=0 / sigma_hat
    visible = re.sub(r"<[^>]+>", "", re.sub(r"<svg.*?</svg>", "", html, flags=re.S))
    assert "eta=" not in visible and "sigma_hat" not in visible and "\u0302" not in visible
    assert 'aria-label="\\hat\\sigma"' in html and 'aria-label="\\eta = 0"' in html
    rec.loc[:, "mse"] = rec["mse"].iloc[::-1].values  # contrary numbers: the error grows with S
    rec.to_csv(r["recon_csv"], index=False)
    html = env.get_template("sections/ddim.html.j2").render(ctx=ddim_section.report_context(files, cfg), config=cfg)
    assert "falls with every added step count" not in html and "does <strong>not</strong> fall" in html


# --------------------------------------------------------------------------------------------
# precision: the UNet in bfloat16 under autocast, the sampler's updates in float32
# --------------------------------------------------------------------------------------------
def test_precision_resolution_and_errors():
    cpu = torch.device("cpu")
    assert resolve_precision("float32", cpu) == "float32"
    assert resolve_precision("bfloat16", cpu) == "bfloat16"
    assert resolve_precision("auto", cpu) == ("bfloat16" if native_bf16(cpu) else "float32")
    with pytest.raises(ValueError, match=r"precision: 'half' is not one of auto, float32, bfloat16"):
        resolve_precision("half", cpu)
    with pytest.raises(ValueError, match="resolve auto first"):
        autocast(cpu, "auto")


def test_bfloat16_sampling_is_close_to_float32_deterministic_and_float32_out(unet, x_T):
    cpu = torch.device("cpu")
    schedule = Schedule.make("linear", T_TINY)
    ref = samplers.ddim_sample(unet, x_T, schedule, 20)
    with autocast(cpu, "float32"):  # float32 changes nothing, bit for bit
        assert torch.equal(samplers.ddim_sample(unet, x_T, schedule, 20), ref)
    runs = []
    for _ in range(2):
        with autocast(cpu, "bfloat16"):
            runs.append(samplers.ddim_sample(unet, x_T, schedule, 20))
    a, b = runs
    assert a.dtype == torch.float32  # the state x_t never leaves float32
    assert a.numpy().tobytes() == b.numpy().tobytes()
    err = float((a - ref).abs().max() / ref.abs().max())
    # bf16 has an 8-bit mantissa (relative rounding 2^-9 ~ 2e-3 per operation): the network ran in
    # it (the result moved) and the samples stay close to float32's
    assert 1e-5 < err < 3e-2, err


def test_stage_records_and_applies_the_precision(stage_run, tmp_path):
    out, cfg, _ = stage_run
    bf = {**cfg, "ddim": {**cfg["ddim"], "precision": "bfloat16"}}
    sample(out / "x_T.safetensors", tmp_path / "bf.safetensors", tmp_path / "bf.json", bf, sampler="ddim", num_steps=20)
    x_bf, meta = io.load_tensor(tmp_path / "bf.safetensors")
    x_32, meta32 = io.load_tensor(out / "ddim_20.safetensors")
    assert meta["precision"] == "bfloat16" and meta32["precision"] == "float32"
    assert json.loads((tmp_path / "bf.json").read_text())["precision"] == "bfloat16"
    assert not torch.equal(x_bf, x_32)
    torch.testing.assert_close(x_bf, x_32, rtol=0, atol=3e-2 * float(x_32.abs().max()))
