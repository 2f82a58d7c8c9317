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


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are too small to share between threads; on a busy 2-core machine two
    threads wait on each other (a step takes 100x longer), one does not."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


def test_per_image_null_text_inversion_in_one_batch_equals_separate_inversions(pipe, image):
    """Three images inverted as one batch, one null embedding each, give what three separate calls
    give; the early stop is per image (a loose threshold stops some images before others)."""
    sched, kw = setup(pipe, 4)
    g = torch.Generator().manual_seed(1)
    images = torch.cat([image, torch.nn.functional.avg_pool2d(torch.rand(2, 3, 16, 16, generator=g) * 2 - 1, 3, 1, 1,
                                                              count_include_pad=False)])
    prompts = [PROMPT, "a blue square on a black background", "a green triangle on a gray background"]
    cond, uncond = embeddings(pipe, *prompts)
    args = (sched["timesteps"], sched["alphas_cumprod"], 3.0)
    pivot = inversion.ddim_invert(pipe.unet, images, cond, *args[:2], **kw)
    # a threshold between the images' first losses, so that some stop early and others go on
    one = [inversion.null_text_invert(pipe.unet, [p[i: i + 1] for p in pivot], cond[i], uncond, *args, inner_steps=6, lr=0.1,
                                      return_losses=True, **kw) for i in range(3)]
    stop = float(sorted(loss[0] for _, loss in one)[1])
    one = [inversion.null_text_invert(pipe.unet, [p[i: i + 1] for p in pivot], cond[i], uncond, *args, inner_steps=6, lr=0.1,
                                      early_stop=stop, return_losses=True, **kw) for i in range(3)]
    nulls, losses = inversion.null_text_invert(pipe.unet, pivot, cond, uncond, *args, inner_steps=6, lr=0.1, early_stop=stop,
                                               return_losses=True, per_image=True, **kw)
    assert nulls.shape == (4, 3, MAX_LEN, uncond.shape[-1]) and losses.shape == (4, 3)
    for i, (n_i, l_i) in enumerate(one):
        # Adam's step is about lr * sign(gradient) where a gradient is ~0, so rounding moves a few
        # entries (seen: 3e-5 at most on an Intel CPU, 2.7e-4 on an AMD EPYC with AVX2 kernels); a wrong
        # gradient or stop moves them by ~lr = 0.1
        assert torch.allclose(nulls[:, i], n_i, atol=1e-3), (i, float((nulls[:, i] - n_i).abs().max()))
        assert torch.allclose(losses[:, i], l_i, rtol=1e-4, atol=1e-9), (i, losses[:, i], l_i)
    # the images did not all take the same number of Adam steps (so the per-image stop was exercised)
    full = inversion.null_text_invert(pipe.unet, pivot, cond, uncond, *args, inner_steps=6, lr=0.1, early_stop=0.0, per_image=True, **kw)
    stopped = [not torch.allclose(nulls[:, i], full[:, i], atol=2e-3) for i in range(3)]
    assert any(stopped) and not all(stopped), stopped
    # and the batch of edits reconstructs each image as its own inversion does
    rec = inversion.sample_with_nulls(pipe.unet, pivot[-1], cond, nulls, *args, **kw)
    for i, (n_i, _) in enumerate(one):
        alone = inversion.sample_with_nulls(pipe.unet, pivot[-1][i: i + 1], cond[i: i + 1], n_i, *args, **kw)
        assert torch.allclose(rec[i: i + 1], alone, atol=1e-4), i


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


# --- the stage (rule p2p_real_edit) on the tiny model ---------------------------------------------

SPEC_DATA = {"image_size": 16, "shapes": ["circle", "square", "triangle"],
             "colours": {"red": "#e02020", "green": "#20b020", "blue": "#2040e0", "yellow": "#f0d020"},
             "backgrounds": {"white": "#ffffff", "black": "#000000", "gray": "#808080"},
             "radius": [3.0, 6.0], "small_below": 3.8, "big_above": 5.2, "size_word_prob": 0.5}
ENTRY = {"name": "red_circle", "image": {"draw": {"shape": "circle", "colour": "red", "background": "white", "cx": 7.5, "cy": 8.5, "radius": 4.5}},
         "prompt": PROMPT, "guidance_scale": 3.0, "num_inversion_steps": 3, "null_text": {"inner_steps": 2, "learning_rate": 0.1, "early_stop": 1e-5},
         "edits": [{"name": "shape_swap", "target": "a red square on a white background", "mode": "replace"},
                   {"name": "same", "target": PROMPT, "mode": "replace"}]}


@pytest.fixture(scope="module")
def reader():
    from diffusion_report.models import attributes, shapes

    return attributes.AttributeReader(shapes.ShapeSpec.from_config(SPEC_DATA)).fit(200, 0, 0.1)


def real_outputs(folder):
    from diffusion_report.stages import p2p

    names = {"inversion": "inversion.safetensors", "metrics": "metrics.csv", "timing": "timing.csv", "edits": "edits"}
    return {k: str(folder / names.get(k, f"{k}.png")) for k in p2p.REAL_ARTIFACTS}


def test_the_stage_writes_inversion_reconstructions_edits_figure_and_metrics(pipe, reader, tmp_path):
    from PIL import Image

    from diffusion_report.io import load_tensors
    from diffusion_report.report import pagecheck
    from diffusion_report.stages import p2p

    image, truth, source = p2p.real_input(ENTRY, SPEC_DATA)
    assert image.shape == (3, 16, 16) and source == "drawn"
    assert truth == {"shape": "circle", "colour": "red", "background": "white", "size_word": ""}
    out = real_outputs(tmp_path)
    df, timing = p2p.real_edit(pipe, reader, ENTRY, truth, source, image, out)
    assert list(df.columns) == p2p.REAL_COLUMNS and "seconds" not in df  # metrics.csv: the same bytes on every run
    assert timing["step"].tolist() == ["ddim_inversion", "null_text_inversion", "edit", "edit"] and (timing["seconds"] > 0).all()
    assert df["method"].tolist() == ["ddim_inversion", "null_text_inversion", "shape_swap", "same"]
    rec = df[df["kind"] == "reconstruction"]
    assert rec["psnr"].notna().all() and rec["ssim"].between(-1, 1).all()
    edits = df[df["kind"] == "edit"].set_index("method")
    assert edits.loc["shape_swap", "edit_type"] == "shape_swap" and edits.loc["shape_swap", "measured"] in (True, "True")
    assert edits.loc["same", "measured"] in (False, "False")  # no edit type changes nothing
    tensors, meta = load_tensors(out["inversion"])
    assert tensors["x_T"].shape == (3, 16, 16) and tensors["null_embeddings"].shape == (3, MAX_LEN, 32)
    assert meta["prompt"] == PROMPT and meta["num_steps"] == 3
    # a later job reuses the saved x_T and null embeddings: the same reconstruction, byte for byte
    from diffusers import DDIMScheduler

    from diffusion_report.io import to_uint8

    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(meta["num_steps"])
    assert sched.timesteps.tolist() == meta["timesteps"]
    again = inversion.sample_with_nulls(pipe.unet, tensors["x_T"][None], encode_prompts(pipe, [PROMPT]), tensors["null_embeddings"],
                                        sched.timesteps, sched.alphas_cumprod, meta["guidance_scale"],
                                        final_alpha_cumprod=float(sched.final_alpha_cumprod))
    assert to_uint8(again[0].clamp(-1, 1)).tobytes() == Image.open(out["reconstruction_null_text"]).tobytes()
    # the edit whose target is the prompt shows the null-text reconstruction
    import numpy as np

    same = np.asarray(Image.open(tmp_path / "edits" / "same.png"), dtype=np.int16)
    assert np.abs(same - np.asarray(Image.open(out["reconstruction_null_text"]), dtype=np.int16)).max() <= 1
    assert pagecheck.printed_font_pt(out["figure"]) >= pagecheck.MIN_FIGURE_FONT_PT
    assert float(Image.open(out["figure"]).info["min-font-pt"]) >= 7.5


def test_a_latent_model_inverts_a_photo_through_its_vae(tmp_path):
    """Stable Diffusion's path on a tiny latent model: a photo file (scikit-image's "camera", any
    size) is resized to the model's image size, encoded by the VAE, inverted and edited in latent
    space, and decoded; no reader (a pretrained model), so edits are shown unmeasured."""
    from diffusers import DDIMScheduler
    from PIL import Image

    from diffusion_report.io import load_tensors, to_uint8
    from diffusion_report.models.text2image import decode, encode
    from diffusion_report.stages import p2p

    pipe = tiny_pipe(pixel=False)
    with torch.no_grad():
        pipe.unet.conv_out.weight.mul_(SMOOTH)
        pipe.unet.conv_out.bias.mul_(SMOOTH)
    assert pipe.image_size == 16 and pipe.latent_shape == (4, 16, 16)  # the tiny VAE has one level: no downsampling
    entry = {"name": "photo", "image": "camera", "prompt": "a photo of a cat", "guidance_scale": 3.0, "num_inversion_steps": 4,
             "null_text": {"inner_steps": 5, "learning_rate": 0.1, "early_stop": 1e-5},
             "edits": [{"name": "dog", "target": "a photo of a dog", "mode": "replace"}]}
    image, truth, source = p2p.real_input(entry, None, image_size=pipe.image_size)
    assert image.shape == (3, 16, 16) and truth is None and source == "prompt"
    out = real_outputs(tmp_path)
    df, timing = p2p.real_edit(pipe, None, entry, truth, source, image, out)
    tensors, meta = load_tensors(out["inversion"])
    assert tensors["x_T"].shape == (4, 16, 16)  # a latent, not an image
    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(meta["num_steps"])
    args = (sched.timesteps, sched.alphas_cumprod, meta["guidance_scale"])
    kw = {"final_alpha_cumprod": float(sched.final_alpha_cumprod)}
    cond, uncond = embeddings(pipe, entry["prompt"])
    null_lat = inversion.sample_with_nulls(pipe.unet, tensors["x_T"][None], cond, tensors["null_embeddings"], *args, **kw)
    ddim_lat = inversion.sample_with_nulls(pipe.unet, tensors["x_T"][None], cond, uncond[0], *args, **kw)
    # the reconstruction shown is the decoded latent of the saved x_T and null embeddings
    assert to_uint8(decode(pipe, null_lat)[0]).tobytes() == Image.open(out["reconstruction_null_text"]).tobytes()
    # in latent space null-text inversion lands closer to the encoded photo than DDIM inversion (seen: 4x closer).
    # (Not asserted in pixels: the tiny VAE's random decoder maps small latent errors to arbitrary pixel errors.)
    target = encode(pipe, image[None])
    assert mse(null_lat, target) < mse(ddim_lat, target) / 2, (mse(null_lat, target), mse(ddim_lat, target))
    rec = df[df["kind"] == "reconstruction"]
    assert rec["psnr"].notna().all() and timing["seconds"].gt(0).all()
    (edit,) = df[df["kind"] == "edit"].to_dict("records")
    assert edit["measured"] in (False, "False") and "embedded model's shapes only" in edit["cause"]
    with pytest.raises(ValueError, match="a drawn image needs the embedded model"):
        p2p.real_input(ENTRY, None, image_size=16)


def test_the_figure_prints_its_text_at_7pt_with_many_edits(tmp_path):
    import numpy as np

    from diffusion_report.report import pagecheck
    from diffusion_report.stages import p2p

    img = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    titles = ["input", "DDIM inversion\nPSNR 30.5 dB\nSSIM 0.985", "null-text inversion\nPSNR 52.5 dB\nSSIM 1.000"]
    titles += [f"edit_{i}:\na big yellow triangle on a black background\nreader: failure" for i in range(7)]
    p2p.real_edit_figure(tmp_path / "f.png", [img] * len(titles), titles)
    assert pagecheck.printed_font_pt(tmp_path / "f.png") >= pagecheck.MIN_FIGURE_FONT_PT


def test_an_image_file_is_read_like_the_forward_stage_and_judged_by_its_prompt(tmp_path):
    from diffusion_report.io import save_png
    from diffusion_report.models import shapes
    from diffusion_report.stages import p2p

    spec = shapes.ShapeSpec.from_config(SPEC_DATA)
    drawn, _ = shapes.render(spec, ["square"], ["blue"], ["gray"], [8.0], [8.0], [4.0])
    big = torch.nn.functional.interpolate(drawn, scale_factor=4, mode="nearest")[0]  # 64 x 64, resized back to 16
    save_png(tmp_path / "square.png", big)
    entry = dict(ENTRY, image=str(tmp_path / "square.png"), prompt="a blue square on a gray background")
    image, truth, source = p2p.real_input(entry, SPEC_DATA)
    assert image.shape == (3, 16, 16) and source == "prompt"
    assert truth == {"size_word": "", "colour": "blue", "shape": "square", "background": "gray"}
    assert float((image - drawn[0]).abs().mean()) < 0.05


# --- the report's subsection (no torch: it reads the artifacts) ------------------------------------


def test_gain_sentence_states_the_goal_from_the_numbers():
    from diffusion_report.report.sections import p2p as section

    met = section.gain_sentence(30.5, 52.5)
    assert met["met"] and "22 dB better, so the goal of at least 5 dB is met" in met["text"] and "at most 1%" in met["text"]
    short = section.gain_sentence(38.0, 41.0)
    assert not short["met"] and "3 dB better, so the goal of at least 5 dB is not met" in short["text"]
    worse = section.gain_sentence(38.0, 35.0)
    assert "3 dB worse" in worse["text"] and "more than 1%" in worse["text"]
    assert section.gain_sentence(30.0, 30.0 + section.NULL_TEXT_GAIN_DB)["met"]  # the threshold itself counts


def render_p2p(ctx, config) -> str:
    """The p2p section rendered as the report does: twice, the second pass resolving ref(key)."""
    from diffusion_report.report import render as report
    from diffusion_report.testing import ROOT

    env = report.environment(ROOT / "report" / "templates")
    template = env.get_template("sections/p2p.html.j2")
    template.render(ctx=ctx, config=config)
    env.globals["numbering"].restart()
    return template.render(ctx=ctx, config=config)


def test_the_report_subsection_shows_each_image_with_its_figure_table_and_verdicts(pipe, reader, tmp_path):
    import re

    import pandas as pd

    from diffusion_report.report.sections import p2p as section
    from diffusion_report.stages import p2p

    image, truth, source = p2p.real_input(ENTRY, SPEC_DATA)
    out = real_outputs(tmp_path)
    df, _ = p2p.real_edit(pipe, reader, ENTRY, truth, source, image, out)
    edits = [{"name": "e", "mode": "replace", "source": PROMPT, "target": "a blue circle on a white background"}]
    pd.DataFrame([{"edit": "e", "mode": "replace", "mask": "attention", "mask_fraction": 1.0, "edit_mae": 0.1, "baseline_mae": 0.2,
                   "edit_mae_outside": float("nan"), "baseline_mae_outside": float("nan")}]).to_csv(tmp_path / "m.csv", index=False)
    config = {"p2p": {"model": {"source": "train", "pretrained": ""}, "scheduler": "ddim", "num_inference_steps": 3, "guidance_scale": 3.0,
                      "edits": edits, "real_edits": [ENTRY]}}
    files = {"metrics": str(tmp_path / "m.csv"), "real_red_circle_figure": out["figure"], "real_red_circle_metrics": out["metrics"],
             "real_red_circle_timing": out["timing"]}
    ctx = section.report_context(files, config)
    (r,) = ctx["real"]
    rec = df[df["kind"] == "reconstruction"].set_index("method")
    psnr = [row["PSNR (dB)"] for row in r["rows"]]
    assert psnr == pytest.approx([rec.loc["ddim_inversion", "psnr"], rec.loc["null_text_inversion", "psnr"]], rel=1e-7)  # the CSV's 8 digits
    assert r["gain"]["text"] == section.gain_sentence(*psnr)["text"]
    assert [e["verdict"]["status"] for e in r["edits"]][1] == "unmeasured"
    html = render_p2p(ctx, config)
    text = " ".join(html.split())
    assert '<h3 id="p2p-real">' in html and "Prompt &#8220;a red circle on a white background&#8221;" in text
    assert ("The input is drawn by the captioned-shapes generator (a red circle of half-extent 4.5 px centred at (7.5, 8.5) "
            "on white), so its attributes are known.") in text
    assert r["gain"]["text"].replace("'", "&#39;") in text
    # every figure and table of the section is referenced from its text
    ids = re.findall(r'<(?:figure|table) id="((?:fig|tab)-\d+)"', html)
    refs = set(re.findall(r'<a class="xref" href="#((?:fig|tab)-\d+)">', html))
    assert len(ids) == 3 and [i for i in ids if i not in refs] == []
    assert re.search(r'inverting the image took <span class="measured">[0-9.]+</span> s', text)
    assert "Editing given images: null-text inversion reconstructs" in " ".join(section.answer(ctx, config)["sentences"])
    # without results there is no subsection; a pretrained model's given images are shown too (no drawn-image evaluation)
    assert section.report_context({"metrics": files["metrics"]}, config)["real"] == []
    pretrained = {"p2p": dict(config["p2p"], model={"source": "pretrained", "pretrained": "x"})}
    ctx_pre = section.report_context(files, pretrained)
    assert [r["name"] for r in ctx_pre["real"]] == ["red_circle"] and ctx_pre["real_eval"] is None


# --- many drawn images, inverted then edited (rule p2p_real_eval) -----------------------------------

EVAL_CFG = {"num_steps": 3, "guidance_scale": 3.0, "cross_replace_steps": 0.8, "self_replace_steps": 0.4, "self_max_tokens": 64}
NULL_TEXT = {"inner_steps": 2, "learning_rate": 0.1, "early_stop": 1e-5}


def test_drawn_cases_draw_what_their_source_prompt_says_from_their_own_stream():
    from diffusion_report.models import shapes
    from diffusion_report.stages import t2i

    spec = shapes.ShapeSpec.from_config(SPEC_DATA)
    cases, images = t2i.drawn_cases(spec, "colour_swap", 5, seed=3)
    again, images_again = t2i.drawn_cases(spec, "colour_swap", 5, seed=3)
    assert torch.equal(images, images_again) and [c.target for c in cases] == [c.target for c in again]
    assert images.shape == (5, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    for c, img in zip(cases, images):
        said = shapes.parse_caption(spec, c.source)
        assert {k: said[k] for k in ("shape", "colour", "background")} == c.source_truth and said["size_word"] == ""
        assert shapes.parse_caption(spec, c.target)["colour"] == c.target_value != c.source_truth["colour"]
        # the image shows the truth: its background colour in a corner, its shape's colour somewhere
        bg, fg = (torch.tensor(shapes.hex_to_rgb(SPEC_DATA[k][c.source_truth[a]])).float() for k, a in (("backgrounds", "background"), ("colours", "colour")))
        corners = img[:, [0, 0, -1, -1], [0, -1, 0, -1]].T
        assert any(torch.allclose(p, bg, atol=0.02) for p in corners)
        assert (img.flatten(1).T - fg).abs().max(1).values.min() < 0.02
    others, _ = t2i.drawn_cases(spec, "shape_swap", 5, seed=3)
    assert [c.source for c in others] != [c.source for c in cases] or not torch.equal(_, images)  # its own stream
    # the generated evaluation's cases are unchanged by the shared helper: same prompts as drawing the batch by hand
    gen = t2i.edit_cases(spec, "colour_swap", 5, seed=3, reweight_scale=3.0)
    from diffusion_report.io import make_generator

    b = shapes.sample(spec, 5, make_generator(3, "t2i/eval/colour_swap"))
    assert [c.source for c in gen] == [shapes.caption(co, sh, bg) for co, sh, bg in zip(b.colour, b.shape, b.background)]
    with pytest.raises(ValueError, match="p2p.real_eval.edits: unknown edit type 'reweight_big'"):
        t2i.drawn_cases(spec, "reweight_big", 2, seed=3)


@pytest.fixture(scope="module")
def small_reader():
    """A reader of shapes whose captions the tiny tokenizer fits in its 16 tokens (its words, and "black")."""
    from diffusion_report.models import attributes, shapes

    data = dict(SPEC_DATA, shapes=["circle", "square"], colours={k: SPEC_DATA["colours"][k] for k in ("red", "blue")},
                backgrounds={k: SPEC_DATA["backgrounds"][k] for k in ("white", "black")})
    return attributes.AttributeReader(shapes.ShapeSpec.from_config(data)).fit(200, 0, 0.1)


def test_a_batch_of_drawn_images_is_edited_as_each_image_alone(pipe, small_reader):
    """real_eval_edit_type inverts and edits n images in one batch; the p2p edit of each image equals
    inverting and editing that image alone (its own null-text inversion and controller)."""
    from diffusion_report.core.attention import make_controller
    from diffusion_report.stages import p2p, t2i

    reader = small_reader
    rows, timing, example = p2p.real_eval_edit_type(pipe, reader, "shape_swap", 3, 5, EVAL_CFG, NULL_TEXT)
    assert [(r["seed_index"], r["method"]) for r in rows] == [(i, m) for i in range(3) for m in ("p2p", "baseline")]
    assert timing["n"] == 3 and timing["per_image_s"] > 0 and timing["null_text_inversion_s"] >= timing["ddim_inversion_s"]
    cases, images = t2i.drawn_cases(reader.spec, "shape_swap", 3, 5)
    for i in range(3):  # each image alone
        inv = p2p.invert_batch(pipe, images[i: i + 1], [cases[i].source], 3, 3.0, NULL_TEXT)
        ctrl = make_controller("replace", [cases[i].source, cases[i].target], pipe.tokenizer, 3, 0.8, 0.4, self_max_tokens=64)
        alone = inversion.sample_with_nulls(pipe.unet, inv["x_T"], encode_prompts(pipe, [cases[i].source, cases[i].target]),
                                            inv["nulls"][:, 0], inv["timesteps"], inv["alphas_cumprod"], 3.0, ctrl, **inv["kw"]).float().clamp(-1, 1)
        expected = t2i.score_pair(reader, cases[i], images[i], alone[1])
        got = next(r for r in rows if r["seed_index"] == i and r["method"] == "p2p")
        assert got["pixel_mae"] == pytest.approx(expected["pixel_mae"], abs=1e-5), i
        assert {k: got[k] for k in ("success", "all_kept")} == {k: expected[k] for k in ("success", "all_kept")}
        assert got["psnr_null_text"] == pytest.approx(p2p._image_scores(images[i], inv["rec_null"][0])[0], abs=0.05)
    # the example is the first image's
    assert torch.equal(example["input"], images[0]) and example["case"].index == 0 and example["p2p_row"] is rows[0]


def test_real_eval_summary_puts_the_rates_beside_the_generated_ones():
    import pandas as pd

    from diffusion_report.stages import p2p

    per = pd.DataFrame([
        {"edit": "shape_swap", "seed_index": i, "method": m, "source": "s", "target": "t", "psnr_ddim": 30.0 + i, "psnr_null_text": 40.0 + 3 * i,
         "ssim_ddim": 0.9, "ssim_null_text": 0.99, "source_ok": True, "success": ok, "untouched_kept": 1.0, "all_kept": kept,
         "mask_iou": 0.5, "centroid_shift_px": 0.2, "radius_change_px": 0.0, "pixel_mae": 0.1}
        for i, (m, ok, kept) in enumerate([("p2p", True, True), ("baseline", False, True), ("p2p", False, True), ("baseline", True, False)])])
    gen = pd.DataFrame([{"edit": "shape_swap", "method": "p2p", "n": 24, "success": 0.75, "all_kept": 0.5},
                        {"edit": "colour_swap", "method": "p2p", "n": 24, "success": 1.0, "all_kept": 1.0}])
    out = p2p.real_eval_summary(per, gen).set_index(["edit", "method"])
    assert list(out.reset_index().columns) == p2p.REAL_EVAL_SUMMARY_COLUMNS
    row = out.loc[("shape_swap", "p2p")]
    assert row["n"] == 2 and row["success"] == 0.5 and row["all_kept"] == 1.0
    assert row["psnr_ddim"] == 31.0 and row["psnr_null_text"] == 43.0 and row["gain_db"] == 12.0  # images 0 and 2
    assert (row["generated_n"], row["generated_success"], row["generated_all_kept"]) == (24, 0.75, 0.5)
    assert pd.isna(out.loc[("shape_swap", "baseline"), "generated_success"])  # no such row in the generated summary


def _real_eval_files(tmp_path, drawn: float, generated: float):
    import pandas as pd

    summary = pd.DataFrame([{"edit": "shape_swap", "method": "p2p", "n": 24, "source_ok": 1.0, "success": drawn, "all_kept": 1.0,
                             "mask_iou": 0.8, "centroid_shift_px": 0.3, "psnr_ddim": 30.0, "psnr_null_text": 47.0, "gain_db": 17.0,
                             "generated_n": 24, "generated_success": generated, "generated_all_kept": 0.95},
                            {"edit": "shape_swap", "method": "baseline", "n": 24, "source_ok": 1.0, "success": 1.0, "all_kept": 0.5,
                             "mask_iou": 0.6, "centroid_shift_px": 1.0, "psnr_ddim": 30.0, "psnr_null_text": 47.0, "gain_db": 17.0,
                             "generated_n": 24, "generated_success": 0.9, "generated_all_kept": 0.9}])
    per = pd.DataFrame([{"edit": "shape_swap", "seed_index": i, "method": m, "psnr_ddim": 30.0, "psnr_null_text": 30.0 + g}
                        for i, g in enumerate([17.0, 4.0]) for m in ("p2p", "baseline")])
    timing = pd.DataFrame([{"edit": "shape_swap", "n": 2, "ddim_inversion_s": 1.0, "null_text_inversion_s": 3.0, "edit_s": 1.0,
                            "per_image_s": 2.0, "threads": 2, "device": "cpu"}])
    for name, df in (("summary", summary), ("per_image", per), ("timing", timing)):
        df.to_csv(tmp_path / f"{name}.csv", index=False)
    return {f"real_eval_{k}": str(tmp_path / f"{k}.csv") for k in ("summary", "per_image", "timing")}


@pytest.mark.parametrize("drawn, generated, within", [(0.65, 0.75, True), (0.64, 0.75, False), (0.95, 0.85, True), (0.96, 0.85, False)])
def test_the_report_states_the_rate_goal_from_the_numbers(tmp_path, drawn, generated, within):
    from diffusion_report.report.sections import p2p as section

    ev = section.real_eval_context(_real_eval_files(tmp_path, drawn, generated), EVAL_CFG)
    (row,) = ev["rows"]
    assert row["within 10 points"] == ("yes" if within else "no") and ev["types_met"] == int(within)
    text = " ".join(ev["text"])
    assert f"is met for {int(within)} of 1 edit types" in text
    assert f"reached in {drawn * 100:.3g}% of the drawn images and {generated * 100:.3g}% of the generated ones" in text
    side = "(within the goal)" if within else "(outside the goal, higher on the drawn images)" if drawn > generated else (
        "(outside the goal, lower on the drawn images)")
    assert side in text
    # a shortfall of the target rate is traced: the no-control sample from the same x_T reaches it in 100%
    short = not within and drawn < generated
    assert ("reaches the target in 100% of the drawn images, so the inversion leaves room for the edit" in text) == short
    # the reconstruction goal per image: one of the two images gains 17 dB, the other 4 dB
    assert "the gain is at least 5 dB (the goal) in 1 of 2 images (smallest gain 4 dB)" in text
    assert ev["per_image"] == {"seconds": 2.0, "threads": 2, "device": "cpu"}  # (3 + 1) s over 2 images


def test_a_missed_rate_goal_says_on_which_side():
    from diffusion_report.report.sections import p2p as section

    def side(ds, gs, dk, gk):
        within = abs(ds - gs) <= 0.1 and abs(dk - gk) <= 0.1
        return section._goal_side({"within": within, "drawn_s": ds, "gen_s": gs, "drawn_k": dk, "gen_k": gk})

    assert side(0.83, 0.83, 1.0, 0.83) == "outside the goal, higher on the drawn images"  # the default run's colour swap
    assert side(0.5, 0.9, 0.95, 0.9) == "outside the goal, lower on the drawn images"  # the kept rate is within: not counted
    assert side(0.5, 0.9, 1.0, 0.8) == "outside the goal"  # one higher, one lower
    assert side(0.85, 0.9, 1.0, 0.95) == "within the goal"


def test_the_report_shows_the_drawn_image_evaluation_with_its_table(tmp_path):
    import re

    import pandas as pd

    from diffusion_report.report.sections import p2p as section

    files = _real_eval_files(tmp_path, 0.5, 0.75)
    pd.DataFrame([{"edit": "e", "mode": "replace", "mask": "attention", "mask_fraction": 1.0, "edit_mae": 0.1, "baseline_mae": 0.2,
                   "edit_mae_outside": float("nan"), "baseline_mae_outside": float("nan")}]).to_csv(tmp_path / "m.csv", index=False)
    config = {"p2p": {"model": {"source": "train", "pretrained": ""}, "scheduler": "ddim", "num_inference_steps": 3, "guidance_scale": 3.0,
                      "edits": [{"name": "e", "mode": "replace", "source": PROMPT, "target": "a blue circle on a white background"}]},
              "t2i": {"eval": EVAL_CFG}}
    ctx = section.report_context({"metrics": str(tmp_path / "m.csv"), **files}, config)
    assert ctx["real"] == [] and ctx["real_eval"]["types_compared"] == 1
    html = render_p2p(ctx, config)
    text = " ".join(html.split())
    assert '<h4 id="p2p-real-eval">Over many drawn images</h4>' in html
    assert "3 DDIM steps, guidance scale 3, cross-attention injected during the first 80% of the steps" in text
    assert "inverted x<sub>T</sub> with the same null-text embeddings" in text  # the caption's markup is kept
    assert re.search(r'took <span class="measured">2</span> s per image', text)
    assert "within 10 points of its rates on generated images for 0 of 1 edit types" in " ".join(section.answer(ctx, config)["sentences"])
    pretrained = dict(config, p2p=dict(config["p2p"], model={"source": "pretrained", "pretrained": "x"}))
    assert section.report_context({"metrics": str(tmp_path / "m.csv"), **files}, pretrained)["real_eval"] is None


# --- config errors (before any job) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def default_config():
    import yaml

    from diffusion_report.testing import ROOT

    return yaml.safe_load((ROOT / "config.yaml").read_text())


def config_errors(cfg) -> str:
    from diffusion_report.config import ConfigError, validate_config
    from diffusion_report.testing import ROOT

    try:
        validate_config(cfg, ROOT / "schemas" / "config.schema.yaml", base_dir=ROOT, workflow_dir=ROOT)
    except ConfigError as exc:
        return str(exc)
    return ""


def _broken_png(folder) -> str:
    (folder / "broken.png").write_bytes(b"this is text, not a PNG")
    return str(folder / "broken.png")


def test_the_default_config_has_real_edits_and_passes(default_config):
    cfg = copy.deepcopy(default_config)
    assert len(cfg["p2p"]["real_edits"]) >= 2
    assert config_errors(cfg) == ""


@pytest.mark.parametrize("change, fragments", [
    (lambda e, tmp: e.update(image=str(tmp / "missing.png")), ["p2p.real_edits[0] (red_circle).image: ", "missing.png", "neither an existing file"]),
    (lambda e, tmp: e.update(image=_broken_png(tmp)),
     ["p2p.real_edits[0] (red_circle).image: ", "is not a readable image"]),
    (lambda e, tmp: e.update(prompt="a red dog on a white background"),
     ["p2p.real_edits[0] (red_circle).prompt: 'dog' not in the embedded model's vocabulary"]),
    (lambda e, tmp: e["edits"][1].update(target="a purple circle on a white background"),
     ["p2p.real_edits[0] (red_circle).edits[1] (colour_swap).target: 'purple' not in the embedded model's vocabulary"]),
    (lambda e, tmp: e["edits"][0].update(target="a red square on a white background today"),
     ["p2p.real_edits[0] (red_circle).edits[0] (shape_swap): mode replace needs prompts with the same number of words"]),
    (lambda e, tmp: e["edits"][1].update(name="shape_swap"), ["p2p.real_edits[0] (red_circle).edits[1] (shape_swap): duplicate name"]),
    (lambda e, tmp: e["image"]["draw"].update(shape="hexagon"), ["p2p.real_edits[0] (red_circle).image.draw.shape: 'hexagon' is not in t2i.data"]),
    (lambda e, tmp: e["image"]["draw"].update(cx=15.0), ["p2p.real_edits[0] (red_circle).image.draw.cx: 15 puts the shape"]),
    (lambda e, tmp: e["image"]["draw"].pop("colour"), ["p2p.real_edits[0].image: must be an image file (a path) or {draw:", "'colour' is a required property"]),
    (lambda e, tmp: e.update(num_inversion_steps=500), ["p2p.real_edits[0] (red_circle).num_inversion_steps: 500 is above", "t2i.schedule.T"]),
    (lambda e, tmp: e.update(guidance_scale=0), ["p2p.real_edits[0].guidance_scale: 0 is out of range"]),
    (lambda e, tmp: e["null_text"].update(learning_rate=-1.0), ["p2p.real_edits[0].null_text.learning_rate: -1.0 is out of range"]),
], ids=["missing image", "unreadable image", "prompt word", "edit word", "word count", "duplicate edit", "drawn shape", "drawn outside",
        "drawing incomplete", "steps above T", "guidance", "learning rate"])
def test_bad_real_edits_fail_before_any_job_naming_the_key(default_config, tmp_path, change, fragments):
    cfg = copy.deepcopy(default_config)
    change(cfg["p2p"]["real_edits"][0], tmp_path)
    msg = config_errors(cfg)
    for f in fragments:
        assert f in msg, msg


def test_duplicate_real_edit_names_are_an_error(default_config):
    cfg = copy.deepcopy(default_config)
    cfg["p2p"]["real_edits"][1]["name"] = cfg["p2p"]["real_edits"][0]["name"]
    assert "p2p.real_edits[1] (red_circle): duplicate name 'red_circle' (also p2p.real_edits[0])" in config_errors(cfg)



def test_real_edits_on_a_pretrained_model_take_files_and_any_words(default_config, tmp_path):
    cfg = copy.deepcopy(default_config)
    # a local folder stands for the hub id (no network here); the check looks for the pipeline's files
    for f in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
              "text_encoder/model.safetensors", "tokenizer/vocab.json", "scheduler/scheduler_config.json"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("{}")
    cfg["p2p"]["model"] = {"source": "pretrained", "pretrained": str(tmp_path)}
    cfg["p2p"]["real_edits"] = [{"name": "cat", "image": "chelsea", "prompt": "a photo of a cat sitting on a rug",
                                 "edits": [{"name": "dog", "target": "a photo of a dog sitting on a rug", "mode": "replace"}]}]
    assert config_errors(cfg) == ""  # outside the embedded vocabulary: fine for Stable Diffusion
    # the default's drawn images are the embedded model's: a pretrained model skips them (one switch away, no error)
    cfg["p2p"]["real_edits"].append(copy.deepcopy(default_config["p2p"]["real_edits"][0]))
    cfg["p2p"]["real_edits"][-1]["edits"][0]["target"] = "a photo of a dog sitting"  # not even checked
    assert config_errors(cfg) == ""
    cfg["p2p"]["real_edits"][0]["edits"][0]["target"] = "a photo of a dog sitting"
    msg = config_errors(cfg)
    assert "red_circle" not in msg, msg
    assert "p2p.real_edits[0] (cat).edits[0] (dog): mode replace needs prompts with the same number of words" in msg, msg

def test_the_homework_preset_edits_a_photo_and_passes_but_for_the_offline_hub(default_config):
    import yaml

    from diffusion_report.testing import ROOT

    cfg = copy.deepcopy(default_config)
    preset = yaml.safe_load((ROOT / "presets" / "hw4.yaml").read_text())
    for block in ("ddim", "p2p"):
        cfg[block].update(preset[block])
    assert [e["image"] for e in cfg["p2p"]["real_edits"]] == ["chelsea"]
    lines = [ln for ln in config_errors(cfg).splitlines()[1:] if ln.strip()]
    # here the hub is unreachable: the only errors are the two models' availability
    assert all("is not in the Hugging Face cache" in ln or "not a complete" in ln for ln in lines), lines

@pytest.mark.parametrize("change, fragments", [
    ({"edits": ["reweight_big"]}, ["p2p.real_eval.edits[0]", "reweight_big", "shape_swap"]),
    ({"images": 0}, ["p2p.real_eval.images", "0"]),
    ({"null_text": {"inner_steps": -1}}, ["p2p.real_eval.null_text.inner_steps", "-1"]),
    ({"imgs": 24}, ["p2p.real_eval", "imgs"]),
], ids=["edit type", "no images", "inner steps", "unknown key"])
def test_a_bad_real_eval_fails_before_any_job_naming_the_key(default_config, change, fragments):
    cfg = copy.deepcopy(default_config)
    cfg["p2p"]["real_eval"].update(change)
    msg = config_errors(cfg)
    for f in fragments:
        assert f in msg, msg

# --- the rule, end to end on the tiny preset --------------------------------------------------------


@pytest.mark.slow
def test_rule_p2p_real_edit_end_to_end(tmp_path):
    import pandas as pd

    from diffusion_report.testing import copy_workflow, job_stats, run_snakemake

    work = copy_workflow(tmp_path / "wf")
    targets = [f"results/p2p/real/{n}/metrics.csv" for n in ("red_circle", "blue_square")]
    proc = run_snakemake(work, *targets, "--configfile", "presets/tiny.yaml", timeout=600)  # targets first: --configfile takes several
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert job_stats(proc.stdout + proc.stderr).get("p2p_real_edit") == 2
    for name in ("red_circle", "blue_square"):
        folder = work / "results" / "p2p" / "real" / name
        df = pd.read_csv(folder / "metrics.csv")
        rec = df[df["kind"] == "reconstruction"].set_index("method")
        assert rec.loc["null_text_inversion", "psnr"] > rec.loc["ddim_inversion", "psnr"]
        for f in ("inversion.safetensors", "input.png", "reconstruction_ddim.png", "reconstruction_null_text.png", "figure.png", "timing.csv"):
            assert (folder / f).is_file()
        assert sorted(p.name for p in (folder / "edits").glob("*.png")) == ["colour_swap.png", "shape_swap.png"]
    again = run_snakemake(work, *targets, "-n", "--configfile", "presets/tiny.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr
    # an image file: an input of its job (a file given relative to the working directory)
    import shutil

    import yaml

    shutil.copy(work / "results/p2p/real/blue_square/input.png", work / "square.png")
    entries = yaml.safe_load((work / "config.yaml").read_text())["p2p"]["real_edits"]
    entries.append(dict(entries[1], name="from_file", image="square.png"))
    (work / "file.yaml").write_text(yaml.safe_dump({"p2p": {"real_edits": entries}}))
    target = "results/p2p/real/from_file/metrics.csv"
    proc = run_snakemake(work, target, "--configfile", "presets/tiny.yaml", "file.yaml", timeout=600)
    assert proc.returncode == 0 and job_stats(proc.stdout + proc.stderr) == {"p2p_real_edit": 1}, proc.stdout[-3000:] + proc.stderr[-3000:]
    df = pd.read_csv(work / target)
    assert df["truth"].eq("prompt").all() and df[df["kind"] == "edit"]["measured"].all()
    shutil.copy(work / "results/p2p/real/red_circle/input.png", work / "square.png")  # another image reruns the job
    again = run_snakemake(work, target, "-n", "--configfile", "presets/tiny.yaml", "file.yaml")
    assert job_stats(again.stdout + again.stderr).get("p2p_real_edit") == 1, again.stdout[-3000:]
