"""Editing a given image: DDIM inversion, null-text inversion and prompt-to-prompt on the inverted x_T.

The model is the tiny Stable-Diffusion-shaped text-to-image bundle of diffusion_report.testing
(pixel space, built in code), with its UNet's output layer scaled down: a randomly initialised
UNet's epsilon swings far more with x than a trained one's, which makes DDIM's ODE so stiff that
the round trip's error does not shrink with the step count; scaled by SMOOTH it does, as for a
trained model.
"""

from __future__ import annotations

import copy

import pytest
import torch

from diffusion_report.core import attention, inversion
from diffusion_report.models.text2image import encode_prompts
from diffusion_report.testing import MAX_LEN, tiny_pipe

SMOOTH = 0.1  # the UNet's output layer is scaled by this (see the module docstring)
PROMPT = "a red circle on a white background"


@pytest.fixture(scope="module")
def _template():
    pipe = tiny_pipe()
    with torch.no_grad():
        pipe.unet.conv_out.weight.mul_(SMOOTH)
        pipe.unet.conv_out.bias.mul_(SMOOTH)
    return pipe


@pytest.fixture
def pipe(_template):
    return copy.deepcopy(_template)


@pytest.fixture(scope="module")
def image():
    """A smooth (1, 3, 16, 16) image in [-1, 1], from its own generator."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


def setup(pipe, steps: int):
    s = pipe.scheduler
    s.set_timesteps(steps)
    return {"timesteps": s.timesteps, "alphas_cumprod": s.alphas_cumprod}, {"final_alpha_cumprod": float(s.final_alpha_cumprod)}


def embeddings(pipe, *prompts):
    return encode_prompts(pipe, list(prompts)), encode_prompts(pipe, [""])


def mse(a, b) -> float:
    return float((a - b).pow(2).mean())


def test_ddim_inversion_returns_the_whole_trajectory(pipe, image):
    sched, kw = setup(pipe, 5)
    cond, _ = embeddings(pipe, PROMPT)
    pivot = inversion.ddim_invert(pipe.unet, image, cond, sched["timesteps"], sched["alphas_cumprod"], **kw)
    assert len(pivot) == 6 and all(p.shape == image.shape for p in pivot)
    assert torch.equal(pivot[0], image)
    # x_T of the inversion is noise-like: much farther from the image than the first step
    assert mse(pivot[-1], image) > 10 * mse(pivot[1], image)


def test_ddim_inversion_round_trip_at_guidance_one_shrinks_with_the_step_count(pipe, image):
    cond, uncond = embeddings(pipe, PROMPT)
    errors = {}
    for steps in (10, 25, 50, 100):
        sched, kw = setup(pipe, steps)
        pivot = inversion.ddim_invert(pipe.unet, image, cond, sched["timesteps"], sched["alphas_cumprod"], **kw)
        rec = inversion.sample_with_nulls(pipe.unet, pivot[-1], cond, uncond[0], sched["timesteps"], sched["alphas_cumprod"], 1.0, **kw)
        errors[steps] = mse(rec, image)
    values = list(errors.values())
    assert all(b < a for a, b in zip(values, values[1:])), errors  # the trend
    assert errors[100] < errors[10] / 4, errors
    assert errors[100] < 1e-3, errors  # PSNR above ~36 dB in [0, 1] units


def test_null_text_inversion_reconstructs_better_than_ddim_inversion_at_guidance_above_one(pipe, image):
    sched, kw = setup(pipe, 5)
    cond, uncond = embeddings(pipe, PROMPT)
    g = 3.0
    pivot = inversion.ddim_invert(pipe.unet, image, cond, sched["timesteps"], sched["alphas_cumprod"], **kw)
    ddim_rec = inversion.sample_with_nulls(pipe.unet, pivot[-1], cond, uncond[0], sched["timesteps"], sched["alphas_cumprod"], g, **kw)
    nulls, losses = inversion.null_text_invert(pipe.unet, pivot, cond, uncond, sched["timesteps"], sched["alphas_cumprod"], g,
                                               lr=0.1, return_losses=True, **kw)
    assert nulls.shape == (5, MAX_LEN, uncond.shape[-1]) and losses.shape == (5,)
    nt_rec = inversion.sample_with_nulls(pipe.unet, pivot[-1], cond, nulls, sched["timesteps"], sched["alphas_cumprod"], g, **kw)
    e_ddim, e_nt = mse(ddim_rec, image), mse(nt_rec, image)
    assert e_nt < e_ddim / 4, (e_ddim, e_nt)
    # deterministic: no random draws anywhere
    again = inversion.null_text_invert(pipe.unet, pivot, cond, uncond, sched["timesteps"], sched["alphas_cumprod"], g, lr=0.1, **kw)
    assert torch.equal(again, nulls)


def test_saved_null_embeddings_are_reused_bit_for_bit(pipe, image, tmp_path):
    from diffusion_report.io import load_tensors, save_tensors

    sched, kw = setup(pipe, 3)
    cond, uncond = embeddings(pipe, PROMPT)
    pivot = inversion.ddim_invert(pipe.unet, image, cond, sched["timesteps"], sched["alphas_cumprod"], **kw)
    nulls = inversion.null_text_invert(pipe.unet, pivot, cond, uncond, sched["timesteps"], sched["alphas_cumprod"], 2.0,
                                       inner_steps=3, **kw)
    path = tmp_path / "inversion.safetensors"
    save_tensors(path, {"x_T": pivot[-1], "null_embeddings": nulls})
    loaded, _ = load_tensors(path)
    assert torch.equal(loaded["x_T"], pivot[-1]) and torch.equal(loaded["null_embeddings"], nulls)
    args = (sched["timesteps"], sched["alphas_cumprod"], 2.0)
    fresh = inversion.sample_with_nulls(pipe.unet, pivot[-1], cond, nulls, *args, **kw)
    reused = inversion.sample_with_nulls(pipe.unet, loaded["x_T"], cond, loaded["null_embeddings"], *args, **kw)
    assert fresh.numpy().tobytes() == reused.numpy().tobytes()


def test_an_edit_whose_target_is_the_prompt_returns_the_reconstruction(pipe, image):
    sched, kw = setup(pipe, 4)
    cond, uncond = embeddings(pipe, PROMPT)
    g = 3.0
    pivot = inversion.ddim_invert(pipe.unet, image, cond, sched["timesteps"], sched["alphas_cumprod"], **kw)
    nulls = inversion.null_text_invert(pipe.unet, pivot, cond, uncond, sched["timesteps"], sched["alphas_cumprod"], g,
                                       inner_steps=3, lr=0.1, **kw)
    rec = inversion.sample_with_nulls(pipe.unet, pivot[-1], cond, nulls, sched["timesteps"], sched["alphas_cumprod"], g, **kw)
    ctrl = attention.make_controller("replace", [PROMPT, PROMPT], pipe.tokenizer, 4, 0.8, 0.4, max_len=MAX_LEN, self_max_tokens=64)
    both = inversion.sample_with_nulls(pipe.unet, pivot[-1], encode_prompts(pipe, [PROMPT, PROMPT]), nulls, sched["timesteps"],
                                       sched["alphas_cumprod"], g, ctrl, **kw)
    assert sum(p.explicit_calls for p in ctrl.processors.values()) > 0  # the controller did run
    assert torch.allclose(both[1], both[0], atol=1e-5)
    assert torch.allclose(both[0], rec[0], atol=1e-4)
    assert all(type(p).__name__ != "P2PAttnProcessor" for p in pipe.unet.attn_processors.values())  # restored


class NaNAt(torch.nn.Module):
    """A UNet whose output is NaN at one timestep."""

    def __init__(self, unet, k):
        super().__init__()
        self.unet, self.k = unet, int(k)

    def forward(self, x, t, encoder_hidden_states):
        out = self.unet(x, t, encoder_hidden_states=encoder_hidden_states)
        if int(t.reshape(-1)[0]) == self.k:
            out.sample = out.sample * float("nan")
        return out


def test_a_non_finite_loss_raises_naming_the_step(pipe, image):
    sched, kw = setup(pipe, 4)
    cond, uncond = embeddings(pipe, PROMPT)
    pivot = inversion.ddim_invert(pipe.unet, image, cond, sched["timesteps"], sched["alphas_cumprod"], **kw)
    k = int(sched["timesteps"][2])
    with pytest.raises(ValueError, match=rf"not finite .* at step 2 \(timestep {k}\) of 4"):
        inversion.null_text_invert(NaNAt(pipe.unet, k), pivot, cond, uncond, sched["timesteps"], sched["alphas_cumprod"], 2.0,
                                   inner_steps=2, **kw)


def test_timesteps_must_be_in_sampling_order(pipe, image):
    sched, kw = setup(pipe, 3)
    cond, _ = embeddings(pipe, PROMPT)
    with pytest.raises(ValueError, match="strictly decreasing"):
        inversion.ddim_invert(pipe.unet, image, cond, sched["timesteps"].flip(0), sched["alphas_cumprod"], **kw)
