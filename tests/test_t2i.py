"""The embedded text-to-image model: generator, tokenizer, training, reader, p2p evaluation."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch

from diffusion_report.io import make_generator
from diffusion_report.models import attributes, shapes, t2i
from diffusion_report.report.sections import t2i as t2i_section
from diffusion_report.stages import t2i as t2i_stage

TINY = {
    "train": True,
    "weights": "models/none",
    "seed": 0,
    "data": {
        "image_size": 8,
        "shapes": ["circle", "square", "triangle"],
        "colours": {"red": "#e02020", "blue": "#2040e0"},
        "backgrounds": {"white": "#ffffff", "black": "#000000"},
        "radius": [2.0, 4.0],
        "small_below": 2.5,
        "big_above": 3.5,
        "size_word_prob": 0.5,
        "colour_word_prob": 0.75,  # some captions name no colour: the refine_colour edit type starts from them
    },
    "model": {"channels": [16, 32], "attention_levels": 2, "layers_per_block": 1, "attention_heads": 2,
              "text_width": 16, "text_layers": 1, "text_heads": 2, "max_length": 12},
    "schedule": {"kind": "cosine", "T": 50, "clip_sample": True},
    "training": {"steps": 3, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 1, "weight_decay": 0.0,
                 "ema_decay": 0.9, "caption_dropout": 0.2, "device": "cpu"},
    "reader": {"train_images": 300, "test_images": 100, "noise": 0.1},
    "samples": {"guidance_scales": [1.0, 3.0], "num_images": 4, "num_steps": 3, "grid_captions": 2},
    "eval": {"seeds": 2, "num_steps": 3, "guidance_scale": 2.0, "cross_replace_steps": 0.8, "self_replace_steps": 0.4,
             "self_max_tokens": 64, "reweight_scale": 3.0, "edits": list(t2i_stage.EDIT_TYPES)},
}


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)  # later tests compare bytes with rules run at their own thread count


def default_spec() -> shapes.ShapeSpec:
    return shapes.ShapeSpec()


# --------------------------------------------------------------------------- generator
def test_generator_ground_truth_matches_pixels():
    spec = default_spec()
    b = shapes.sample(spec, 64, make_generator(0, "test/gt"))
    assert b.images.shape == (64, 3, 16, 16) and b.masks.shape == (64, 16, 16)
    for i in range(len(b)):
        fg = torch.tensor(shapes.hex_to_rgb(spec.colours[b.colour[i]])).view(3, 1, 1)
        bg = torch.tensor(shapes.hex_to_rgb(spec.backgrounds[b.background[i]])).view(3, 1, 1)
        img, m = b.images[i].double(), b.masks[i]
        margin = ((img - bg) ** 2).sum(0).sqrt() - ((img - fg) ** 2).sum(0).sqrt()  # > 0: closer to the shape colour
        assert (margin[m] > 1e-4).all() and (margin[~m] < 1e-4).all(), f"image {i}: mask disagrees with pixels"
        # pixels well inside/outside are the exact palette colours
        assert torch.allclose(img[:, 0, 0].float(), bg.view(3).float(), atol=1e-6) or m[0, 0]
        ys, xs = torch.nonzero(m, as_tuple=True)
        extent = max(int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)) / 2
        assert abs(extent - float(b.radius[i])) <= 1.0
        assert xs.float().mean() + 0.5 == pytest.approx(float(b.cx[i]), abs=1.0)
        words = b.captions[i].split()
        assert b.colour[i] in words and b.shape[i] in words and b.background[i] in words
        if b.size_word[i] == "big":
            assert float(b.radius[i]) > spec.big_above
        if b.size_word[i] == "small":
            assert float(b.radius[i]) < spec.small_below


def test_generator_is_seeded_and_shapes_differ():
    spec = default_spec()
    a = shapes.sample(spec, 16, make_generator(0, "x"))
    b = shapes.sample(spec, 16, make_generator(0, "x"))
    c = shapes.sample(spec, 16, make_generator(1, "x"))
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, c.images)
    # same place and size, different shapes give different masks
    masks = [shapes.render(spec, [s], ["red"], ["white"], [8.0], [8.0], [5.0])[1] for s in ("circle", "square", "triangle", "diamond")]
    areas = [int(m.sum()) for m in masks]
    assert areas[1] > areas[0] > areas[3] and areas[0] > areas[2]  # square > circle > diamond, circle > triangle


# --------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trips_vocabulary(tmp_path):
    from transformers import AutoTokenizer

    spec = default_spec()
    tok = t2i.build_tokenizer(spec.vocabulary(), 12)
    tok.save_pretrained(tmp_path / "tokenizer")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    ids = set()
    for w in spec.vocabulary():
        for t in (tok, loaded):
            enc = t(w).input_ids
            assert enc[0] == t.bos_token_id and enc[-1] == t.eos_token_id and len(enc) == 3
            assert enc[1] != t.unk_token_id
            assert t.decode(enc[1:2]) == w
        ids.add(tok(w).input_ids[1])
    assert len(ids) == len(spec.vocabulary())  # one id per word
    cap = "a big red circle on a white background"
    assert loaded.decode(loaded(cap).input_ids, skip_special_tokens=True) == cap
    assert tok(cap).input_ids == loaded(cap).input_ids
    assert loaded("").input_ids == [loaded.bos_token_id, loaded.eos_token_id]
    assert loaded("a purple circle").input_ids[2] == loaded.unk_token_id
    padded = t2i.tokenize(loaded, [cap, ""])
    assert padded.shape == (2, 12) and int(padded[1, 2]) == loaded.pad_token_id


# --------------------------------------------------------------------------- training
def test_training_lowers_the_loss_and_saves_a_loadable_model(tmp_path):
    from diffusion_report.models.text2image import (
        generate,
        initial_latents,
        load_text2image,
    )

    cfg = copy.deepcopy(TINY)
    cfg["training"]["steps"] = 40
    model = t2i.build_model(cfg)

    def fixed_loss(m):
        images, prompts = t2i.training_batch(m.spec, 32, 0.0, make_generator(5, "test/batch"))
        with torch.no_grad():
            return float(t2i.diffusion_loss(m, images, prompts, make_generator(5, "test/noise")))

    before = fixed_loss(model)
    trained, curve = t2i.train(cfg, model=model, log_every=0)
    after = fixed_loss(trained)
    assert len(curve) == 40 and list(curve.columns) == ["step", "loss", "lr", "seconds"]
    assert after < 0.7 * before, (before, after)
    t2i.save_model(trained, tmp_path / "m", t2i.model_config(cfg))
    assert json.loads((tmp_path / "m" / "t2i_config.json").read_text())["training"]["steps"] == 40
    # rule t2i_train counts a shipped model's parameters from its files' headers, without loading it
    from diffusion_report.io import safetensors_numel

    assert safetensors_numel(tmp_path / "m/unet/diffusion_pytorch_model.safetensors") == t2i.count_parameters(trained.unet)
    assert safetensors_numel(tmp_path / "m/text_encoder/model.safetensors") == t2i.count_parameters(trained.text_encoder)
    # the prompt-to-prompt loader reads it like Stable Diffusion (pixel space: no vae/)
    pipe = load_text2image(tmp_path / "m", config_key="t2i.weights", device="cpu")
    assert pipe.vae is None and pipe.latent_shape == (3, 8, 8)
    x_T = initial_latents(pipe, 0, "t")
    img, _ = generate(pipe, ["a red circle on a white background"], x_T, 3, 2.0)
    ref = t2i.sample(trained, ["a red circle on a white background"], x_T, 3, 2.0)
    assert img.shape == (1, 3, 8, 8)
    assert torch.allclose(img, ref, atol=1e-4)  # our sampler and the p2p loader agree


def test_training_is_deterministic():
    cfg = copy.deepcopy(TINY)
    _, a = t2i.train(cfg, steps=2, log_every=0)
    m2, b = t2i.train(cfg, steps=2, log_every=0)
    assert a["loss"].tolist() == b["loss"].tolist()


def test_training_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    """A run stopped after 2 of 5 steps and restarted from its checkpoint gives the weights and the
    loss curve of a run left alone; a checkpoint of another recipe is ignored, not resumed."""
    cfg = copy.deepcopy(TINY)
    full, full_loss = t2i.train(cfg, steps=5, log_every=0)
    ck = tmp_path / "ck.pt"
    cut = copy.deepcopy(cfg)
    cut["training"]["stop_after"] = 2  # stands in for a killed job: the checkpoint holds step 2
    _, part = t2i.train(cut, steps=5, log_every=0, checkpoint=ck, checkpoint_every=100)
    assert len(part) == 2 and torch.load(ck, weights_only=True)["step"] == 2
    resumed, loss = t2i.train(cfg, steps=5, log_every=0, checkpoint=ck)
    assert loss["loss"].tolist() == full_loss["loss"].tolist() and loss["step"].tolist() == [1, 2, 3, 4, 5]
    for a, b in zip(list(full.unet.state_dict().values()) + list(full.text_encoder.state_dict().values()),
                    list(resumed.unet.state_dict().values()) + list(resumed.text_encoder.state_dict().values())):
        assert torch.equal(a, b)
    other = copy.deepcopy(cfg)
    other["training"]["learning_rate"] = 1e-3
    _, fresh = t2i.train(other, steps=5, log_every=0, checkpoint=ck)  # ck holds step 5 of the other recipe
    assert fresh["step"].tolist() == [1, 2, 3, 4, 5] and fresh["loss"].tolist()[0] == full_loss["loss"].tolist()[0]
    assert fresh["loss"].tolist()[1:] != full_loss["loss"].tolist()[1:]  # trained anew at its own rate


def test_shipped_weight_checksums(tmp_path):
    cfg = t2i.block_config({k: v for k, v in TINY.items() if k != "seed"}, 0)
    m = t2i.build_model(cfg)
    t2i.save_model(m, tmp_path / "w" / "model", t2i.model_config(cfg))
    pd.DataFrame({"step": [1], "loss": [1.0], "lr": [0.1], "seconds": [0.1]}).to_csv(tmp_path / "w" / "loss.csv", index=False)
    sums = t2i.sha256_table(tmp_path / "w")
    (tmp_path / "w" / "SHA256SUMS").write_text("".join(f"{h}  {p}\n" for p, h in sums.items()))
    t2i.verify_weights(tmp_path / "w")
    cfg["train"], cfg["weights"] = False, str(tmp_path / "w")
    out = {k: str(tmp_path / "o" / n) for k, n in
           (("model", "model"), ("loss", "loss.csv"), ("loss_plot", "loss.png"), ("summary", "s.csv"))}
    t2i_stage.t2i_train(cfg, 0, out)
    assert (tmp_path / "o" / "model" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    other = copy.deepcopy(cfg)
    other["model"]["text_width"] = 32
    with pytest.raises(ValueError, match="different config"):
        t2i_stage.t2i_train(other, 0, {k: v + "2" for k, v in out.items()})
    with open(tmp_path / "w" / "loss.csv", "a") as fh:
        fh.write("2,0.5,0.1,0.2\n")
    with pytest.raises(ValueError, match="checksum mismatch"):
        t2i.verify_weights(tmp_path / "w")


# --------------------------------------------------------------------------- attribute reader
@pytest.fixture(scope="module")
def reader():
    return attributes.AttributeReader(default_spec()).fit(600, 0, 0.1)


def test_reader_reaches_stated_accuracy(reader):
    df = attributes.reader_accuracy(reader, 200, 1, noise_levels=(0.0, 0.1))
    for row in df.to_dict("records"):
        assert row["shape_acc"] >= 0.95, row
        assert row["colour_acc"] == 1.0 and row["background_acc"] == 1.0, row
        assert row["mask_iou"] >= 0.9 and row["centre_err_px"] < 0.5, row


def test_the_saved_reader_reads_as_the_fitted_one_and_knows_its_config(tmp_path):
    """Rule t2i_reader fits the reader once and saves it; the other rules read with the saved one:
    the same shapes on held-out images, and an error naming what differs when the config changed."""
    cfg = copy.deepcopy(TINY)
    fitted = t2i_stage.fit_reader(cfg, 3)
    t2i_stage.t2i_reader(cfg, 3, str(tmp_path / "acc.csv"), str(tmp_path / "reader.json"))
    loaded = t2i_stage.fit_reader(cfg, 3, tmp_path / "reader.json")
    images, _ = attributes.noisy_samples(fitted.spec, 60, 9, "held-out", 0.15)
    assert [fitted.read(im).shape for im in images] == [loaded.read(im).shape for im in images]
    X = np.stack([attributes.mask_features(attributes.segment(im, fitted.spec)[0]) for im in images])
    assert np.array_equal(fitted.classifier.decision_function(X), loaded.classifier.decision_function(X))  # bit for bit
    with pytest.raises(ValueError, match=r"fitted for another config \(seed differ\); rerun rule t2i_reader"):
        t2i_stage.fit_reader(cfg, 4, tmp_path / "reader.json")
    other = copy.deepcopy(cfg)
    other["reader"]["noise"] = 0.3
    with pytest.raises(ValueError, match=r"\(noise differ\)"):
        t2i_stage.fit_reader(other, 3, tmp_path / "reader.json")

def test_reader_scores_edits_by_ground_truth(reader):
    spec = default_spec()
    src, _ = shapes.render(spec, ["circle"], ["red"], ["white"], [7.0], [8.0], [5.5])
    blue, _ = shapes.render(spec, ["circle"], ["blue"], ["white"], [7.0], [8.0], [5.5])
    moved, _ = shapes.render(spec, ["square"], ["red"], ["black"], [10.0], [9.0], [3.0])
    for drawn in t2i_stage.edit_cases(spec, "colour_swap", 8, 0, 2.0):
        assert drawn.target_value != drawn.source_truth["colour"] and drawn.target_value in drawn.target.split()
    case = t2i_stage.EditCase("colour_swap", 0, "", "", "replace", "colour", "blue", ("shape", "background"), None,
                             {"shape": "circle", "colour": "red", "background": "white"})
    good = t2i_stage.score_pair(reader, case, src[0], blue[0])
    assert good["success"] and good["all_kept"] and good["source_ok"]
    assert good["mask_iou"] == 1.0 and good["centroid_shift_px"] == 0.0
    bad = t2i_stage.score_pair(reader, case, src[0], moved[0])
    assert not bad["success"] and not bad["all_kept"] and bad["untouched_kept"] == 0.0
    assert bad["mask_iou"] < 0.5 and bad["centroid_shift_px"] > 2.0 and bad["radius_change_px"] < -1.5


# --------------------------------------------------------------------------- showcased edits
def test_captions_parse_back_to_their_attributes():
    spec = default_spec()
    assert shapes.parse_caption(spec, shapes.caption("red", "circle", "white", "big")) == {
        "size_word": "big", "colour": "red", "shape": "circle", "background": "white"}
    assert shapes.parse_caption(spec, "a  Blue square on a gray background")["colour"] == "blue"
    for bad in ("a purple circle on a white background", "a red circle", "a red circle on the white background", ""):
        assert shapes.parse_caption(spec, bad) is None, bad


def test_configured_edits_map_to_the_evaluation_edit_types():
    spec = default_spec()
    cap = shapes.caption

    def kind(src, tgt, mode, **kw):
        return t2i_stage.edit_type(spec, {"source": src, "target": tgt, "mode": mode, **kw})

    assert kind(cap("red", "circle", "white"), cap("red", "square", "white"), "replace") == ("shape_swap", "")
    assert kind(cap("red", "circle", "white"), cap("blue", "circle", "white"), "replace")[0] == "colour_swap"
    assert kind(cap("red", "circle", "white"), cap("red", "circle", "gray"), "replace")[0] == "background_swap"
    assert kind(cap("red", "circle", "white"), cap("red", "circle", "white", "big"), "refine")[0] == "refine_big"
    big = cap("red", "circle", "white", "big")
    assert kind(big, big, "reweight", reweight={"words": ["big"], "scale": 2})[0] == "reweight_big"
    none, why = kind(cap("red", "circle", "white"), cap("red", "circle", "white"), "reweight", reweight={"words": ["red"], "scale": 2})
    assert none is None and "not measured" in why
    none, why = kind(cap("red", "circle", "white"), cap("blue", "square", "white"), "replace")
    assert none is None and "shape, colour" in why


def test_the_reader_judges_drawn_edits(reader):
    """A drawn shape swap in place succeeds; a colour change, a move or a missed target fails,
    each with its cause."""
    spec = default_spec()
    src_cap = {"size_word": "", "colour": "red", "shape": "circle", "background": "white"}
    tgt_cap = dict(src_cap, shape="square")

    def draw(shape, colour, cx):
        return shapes.render(spec, [shape], [colour], ["white"], [cx], [8.0], [5.0])[0][0]

    source = draw("circle", "red", 8.0)
    ok = t2i_stage.judge(reader, "shape_swap", src_cap, tgt_cap, source, draw("square", "red", 8.0))
    assert ok["success"] and ok["reached"] and ok["untouched_kept"] and ok["cause"] == "" and ok["centroid_shift_px"] < 0.2
    recoloured = t2i_stage.judge(reader, "shape_swap", src_cap, tgt_cap, source, draw("square", "green", 8.0))
    assert not recoloured["success"] and recoloured["reached"] and "colour red -> green" in recoloured["cause"]
    moved = t2i_stage.judge(reader, "shape_swap", src_cap, tgt_cap, source, draw("square", "red", 11.0))
    assert not moved["success"] and "moved by 3.0 px" in moved["cause"]
    missed = t2i_stage.judge(reader, "shape_swap", src_cap, tgt_cap, source, draw("circle", "red", 8.0))
    assert not missed["success"] and "target shape is not reached (read: circle)" in missed["cause"]


def test_showcase_verdicts_are_written_beside_the_evaluation_rates(tmp_path):
    from diffusion_report.io import save_png, to_uint8

    cfg = {"data": copy.deepcopy(TINY["data"]), "reader": {"train_images": 300, "test_images": 10, "noise": 0.1}}
    cfg["data"]["image_size"] = 16
    cfg["data"]["radius"] = [3.0, 6.0]
    spec = shapes.ShapeSpec.from_config(cfg["data"])
    files = {}
    for name, (shape, colour) in {"source": ("circle", "red"), "edit": ("square", "red"), "baseline": ("square", "blue")}.items():
        img = shapes.render(spec, [shape], [colour], ["white"], [8.0], [8.0], [5.0])[0][0]
        files[name] = str(tmp_path / f"{name}.png")
        save_png(files[name], to_uint8(img))
    pd.DataFrame([{"edit": "shape_swap", "method": "p2p", "n": 24, "success": 0.25},
                  {"edit": "shape_swap", "method": "baseline", "n": 24, "success": 0.75}]).to_csv(tmp_path / "eval.csv", index=False)
    edits = [{"name": "s", "mode": "replace", "source": shapes.caption("red", "circle", "white"), "target": shapes.caption("red", "square", "white")},
             {"name": "r", "mode": "reweight", "source": shapes.caption("red", "circle", "white"), "target": shapes.caption("red", "circle", "white"),
              "reweight": {"words": ["red"], "scale": 2.0}}]
    df = t2i_stage.t2i_showcase(edits, {"s": files, "r": files}, str(tmp_path / "eval.csv"), cfg, 0, str(tmp_path / "out.csv"))
    rows = {(r["edit"], r["method"]): r for r in pd.read_csv(tmp_path / "out.csv").to_dict("records")}
    assert rows[("s", "p2p")]["success"] and rows[("s", "p2p")]["eval_success"] == 0.25 and rows[("s", "p2p")]["eval_n"] == 24
    assert not rows[("s", "baseline")]["success"] and "colour red -> blue" in rows[("s", "baseline")]["cause"]
    assert not rows[("r", "p2p")]["measured"] and "not measured" in rows[("r", "p2p")]["cause"]
    assert len(df) == 4
    # where the showcased edit's settings differ from the evaluation's, the row says which
    ev = {"num_steps": 20, "guidance_scale": 2.0, "cross_replace_steps": 0.8, "self_replace_steps": 0.4, "self_max_tokens": None}
    same = {"num_inference_steps": 20, "guidance_scale": 2}
    assert t2i_stage.settings_differ({"cross_replace_steps": 0.8, "self_replace_steps": 0.4}, same, ev) == ""
    differ = t2i_stage.settings_differ({"cross_replace_steps": 0.6}, same, dict(ev, self_max_tokens=256))
    assert differ == "cross_replace_steps 0.6 here, 0.8 in the evaluation; self_max_tokens default here, 256 in the evaluation"
    # p2p.self_max_tokens is what the showcased edits use
    assert t2i_stage.settings_differ({"cross_replace_steps": 0.8, "self_replace_steps": 0.4}, dict(same, self_max_tokens=256),
                                     dict(ev, self_max_tokens=256)) == ""
    assert t2i_stage.settings_differ({"cross_replace_steps": 0.8, "self_replace_steps": 0.4}, dict(same, self_max_tokens=64),
                                     dict(ev, self_max_tokens=256)) == "self_max_tokens 64 here, 256 in the evaluation"
    # the evaluation's per-word schedule: a word swap shows it by its swapped-in word, other modes are unaffected
    per_word = dict(ev, edited_word_cross_replace_steps=0.4)
    swap = {"mode": "replace", "source": "a red circle on a white background", "target": "a red square on a white background",
            "self_replace_steps": 0.4}
    assert t2i_stage.settings_differ(dict(swap, cross_replace_steps={"default": 0.8, "square": 0.4}), same, per_word) == ""
    assert t2i_stage.settings_differ(dict(swap, cross_replace_steps={"default_": 0.8, "square": 0.4, "red": 0.8}), same, per_word) == ""
    assert (t2i_stage.settings_differ(dict(swap, cross_replace_steps=0.8), same, per_word)
            == "cross_replace_steps 0.8 here, {default: 0.8, square: 0.4} in the evaluation")
    assert (t2i_stage.settings_differ(dict(swap, cross_replace_steps={"default": 0.8, "square": 0.4}), same, ev)
            == "cross_replace_steps {default: 0.8, square: 0.4} here, 0.8 in the evaluation")
    refine = {"mode": "refine", "source": "a circle on a white background", "target": "a red circle on a white background",
              "cross_replace_steps": 0.8, "self_replace_steps": 0.4}
    assert t2i_stage.settings_differ(refine, same, per_word) == ""


def test_edited_word_schedule_of_a_case():
    """t2i.eval.edited_word_cross_replace_steps: in a word swap the swapped-in word's tokens are injected
    for their own fraction of the steps, every other token for cross_replace_steps; refine and reweight
    cases, and None, keep one fraction for every token."""
    from types import SimpleNamespace

    spec = shapes.ShapeSpec.from_config(dict(TINY["data"], colour_word_prob=0.75))
    pipe = SimpleNamespace(tokenizer=t2i.build_tokenizer(spec.vocabulary(), 12))
    steps, rows = 10, 11  # the alpha has S + 1 rows (the reference's window)
    swap = t2i_stage.edit_cases(spec, "shape_swap", 1, 0, 3.0)[0]
    assert t2i_stage.case_cross_steps(swap, 0.8, 0.4) == {"default": 0.8, swap.target_value: 0.4}
    alpha = t2i_stage.case_controller(pipe, swap, steps, 0.8, 0.0, edited_word=0.4).cross_alpha[:, 0]  # (S + 1, L)
    new = swap.target.split().index(swap.target_value) + 1  # one token per word after <bos>
    assert alpha[:, new].tolist() == [1.0] * int(0.4 * rows) + [0.0] * (rows - int(0.4 * rows))
    others = [i for i in range(alpha.shape[1]) if i != new]
    assert (alpha[:, others].sum(0) == int(0.8 * rows)).all()
    plain = t2i_stage.case_controller(pipe, swap, steps, 0.8, 0.0).cross_alpha[:, 0]
    assert (plain.sum(0) == int(0.8 * rows)).all()  # None: the word swap as before
    for edit in ("refine_colour", "reweight_big"):
        case = t2i_stage.edit_cases(spec, edit, 1, 0, 3.0)[0]
        assert t2i_stage.case_cross_steps(case, 0.8, 0.4) == 0.8, edit


def test_the_reader_and_the_report_share_one_in_place_bound():
    """The stage judges "in place" with the bound the report's sentences state (the report layer
    cannot import the stage, which needs torch)."""
    assert t2i_stage.MAX_SHIFT_PX == t2i_section.GOAL_SHIFT_PX
    assert t2i_stage.PAIR_EDIT_TYPES == t2i_section.PAIR_EDIT_TYPES  # the two-object edit types, written in both layers


def test_showcase_sentences_follow_the_verdicts():
    from diffusion_report.report.sections import p2p as p2p_section

    good = {"edit_type": "shape_swap", "measured": True, "success": True, "centroid_shift_px": 0.3, "cause": "",
            "eval_n": 24, "eval_success": 0.25, "eval_success_baseline": 0.75}
    bad = dict(good, success=False, cause="the target shape is not reached (read: circle)")
    v = p2p_section.verdict({"p2p": good, "baseline": bad})
    assert v["status"] == "success" and "prompt-to-prompt succeeds" in v["text"] and "an untypical outcome" in v["text"]
    assert "Without control, the edited prompt fails: the target shape is not reached" in v["text"]
    assert "25% of them and the no-control baseline in 75%" in v["text"]
    assert "The evaluation used this edit's settings." in v["text"]
    v = p2p_section.verdict({"p2p": dict(good, settings_differ="guidance 3 here, 2 in the evaluation"), "baseline": bad})
    assert "The evaluation's settings differ from this edit's (guidance 3 here, 2 in the evaluation)." in v["text"]
    v = p2p_section.verdict({"p2p": bad, "baseline": good})
    assert v["status"] == "failure" and "prompt-to-prompt fails: the target shape" in v["text"] and "a typical outcome" in v["text"]
    v = p2p_section.verdict({"p2p": {"measured": False, "cause": "reweighting 'red' is not measured"}})
    assert v["status"] == "unmeasured" and "reweighting 'red'" in v["text"]
    assert p2p_section.verdict(None) is None


def test_tradeoff_labels_name_each_cluster_once_with_its_fractions():
    """The trade-off figure's labels: points that lie together share one label listing their
    fractions (runs as "a–b") at the cluster's rightmost point; a point that leaves the cluster
    mid-sweep gets its own (a default run's shape swap: 0.6 fell to 11 of 12 seeds, the others sat
    at 1.0 within 0.08 of IoU)."""
    p = pd.DataFrame({"cross_replace_steps": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
                      "mask_iou": [0.581, 0.618, 0.635, 0.649, 0.655, 0.648], "success": [1.0, 1.0, 1.0, 11 / 12, 1.0, 1.0]})
    assert t2i_stage.tradeoff_labels(p) == [(0.655, 1.0, "0–0.4, 0.8–1"), (0.649, 11 / 12, "0.6")]
    apart = p.assign(mask_iou=[0.1, 0.3, 0.5, 0.7, 0.9, 1.0], success=[1.0] * 6)
    assert [t for _, _, t in t2i_stage.tradeoff_labels(apart)] == ["0", "0.2", "0.4", "0.6", "0.8–1"]


def test_tradeoff_sweep_on_a_tiny_model(tmp_path):
    """Rows per edit type: the baseline and one per fraction; with no injection at all (cross 0,
    self 0) prompt-to-prompt's controllers sample exactly what plain generation samples, which is
    why the sweep reuses the baseline's images for that point."""
    from PIL import Image

    cfg = copy.deepcopy(TINY)
    cfg["tradeoff"] = {"enabled": True, "edits": ["shape_swap", "colour_swap"], "cross_replace_steps": [0.0, 1.0],
                       "self_replace_steps": 0.0, "seeds": 3}
    model = t2i.build_model(cfg)
    t2i.save_model(model, tmp_path / "m", t2i.model_config(cfg))
    out = {"csv": str(tmp_path / "t.csv"), "png": str(tmp_path / "t.png")}
    df = t2i_stage.t2i_tradeoff(str(tmp_path / "m"), cfg, 0, out, device="cpu")
    assert list(df["method"]) == ["baseline", "p2p", "p2p"] * 2 and set(df["n"]) == {3}
    scores = ["success", "mask_iou", "centroid_shift_px", "all_kept"]
    for edit in ("shape_swap", "colour_swap"):
        d = df[df["edit"] == edit]
        base, none = d[d["method"] == "baseline"].iloc[0], d[d["cross_replace_steps"] == 0.0].iloc[0]
        assert none[scores].tolist() == base[scores].tolist()
    # what the reuse rests on: controllers with empty windows change no attention call, bytes included
    from diffusion_report.models.text2image import generate, load_text2image

    pipe = load_text2image(str(tmp_path / "m"), config_key="t2i.weights", device="cpu", scheduler="ddim")
    for edit in ("shape_swap", "refine_big", "reweight_big"):
        cases = t2i_stage.edit_cases(model.spec, edit, 2, 0, 3.0)
        prompts, x_T = t2i_stage.case_batch(pipe, cases, 0)
        plain, _ = generate(pipe, prompts, x_T, 4, 2.0)
        none, _ = generate(pipe, prompts, x_T, 4, 2.0, t2i_stage.case_controllers(pipe, cases, 4, 0.0, 0.0, 64))
        assert torch.equal(none, plain), edit
        some, _ = generate(pipe, prompts, x_T, 4, 2.0, t2i_stage.case_controllers(pipe, cases, 4, 0.5, 0.0, 64))
        assert not torch.equal(some[1::2], plain[1::2]), edit  # a window of 2 steps does change the targets
    assert Image.open(out["png"]).info["min-font-pt"] == "8"


def test_reweight_sweep_on_a_tiny_model(tmp_path):
    """Rows per (scale, seed), scale-major; reweighting by 1 is the source itself: the edited images
    at scale 1 equal plain generation of the source prompts from the same x_T (so a wrong equalizer
    or a scale/seed mix-up in the batch fails), and their area change is 0."""
    from PIL import Image

    from diffusion_report.models.text2image import generate, load_text2image

    cfg = copy.deepcopy(TINY)
    cfg["reweight_sweep"] = {"enabled": True, "scales": [3.0, 0.0, 1.0], "seeds": 2, "examples": 2}
    model = t2i.build_model(cfg)
    t2i.save_model(model, tmp_path / "m", t2i.model_config(cfg))
    out = {k: str(tmp_path / f"{k}.{ext}") for k, ext in (("csv", "csv"), ("png", "png"), ("examples", "png"))}
    df = t2i_stage.t2i_reweight(str(tmp_path / "m"), cfg, 0, out, device="cpu")
    assert list(df["scale"]) == [0.0, 0.0, 1.0, 1.0, 3.0, 3.0] and list(df["seed_index"]) == [0, 1] * 3
    assert (df[df["scale"] == 1.0]["area_change_px"] == 0).all()
    assert all(Image.open(out[k]).size[0] > 100 for k in ("png", "examples"))

    pipe = load_text2image(str(tmp_path / "m"), config_key="t2i.weights", device="cpu", scheduler="ddim")
    reader = t2i_stage.fit_reader(cfg, 0)
    cases = t2i_stage.edit_cases(reader.spec, "reweight_big", 2, 0, 3.0)
    ec = cfg["eval"]
    _, images = t2i_stage.reweight_points(pipe, reader, cases, 0, int(ec["num_steps"]), float(ec["guidance_scale"]), [0.0, 1.0, 3.0],
                                          float(ec["cross_replace_steps"]), float(ec["self_replace_steps"]))
    prompts, x_T = t2i_stage.case_batch(pipe, cases, 0)
    plain, _ = generate(pipe, prompts, x_T, int(ec["num_steps"]), float(ec["guidance_scale"]))
    torch.testing.assert_close(images[1], plain[0::2], atol=1e-4, rtol=0)
    assert (images[2] - plain[0::2]).abs().max() > 1e-3  # scale 3 changes something


def test_text_encoder_without_layers_keeps_each_token_to_its_word():
    """t2i.model.text_layers 0: a token's state depends on its own word and position only, so
    swapping one word changes that token's state and no other (with layers, later tokens change
    too: the causal encoder mixes earlier words into them)."""
    states = {}
    for layers in (0, 2):
        cfg = copy.deepcopy(TINY)
        cfg["model"]["text_layers"] = layers
        model = t2i.build_model(cfg)
        ids = model.tokenizer(["a red circle on a white background", "a blue circle on a white background"], padding="max_length",
                              max_length=int(cfg["model"]["max_length"]), return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.text_encoder(ids)[0]
        changed = ((out[0] - out[1]).abs().amax(-1) > 1e-6).nonzero().flatten().tolist()
        states[layers] = changed
    assert states[0] == [2]  # bos, "a", "red"/"blue": only position 2 differs
    assert states[2][0] == 2 and len(states[2]) > 1


def test_reweight_sentences_follow_the_numbers():
    def frame(areas):  # areas[seed][scale index] over scales 0, 1, 2; source area 10
        return pd.DataFrame([{"scale": s, "seed_index": i, "source": "", "source_area_px": 10, "area_px": a, "area_change_px": a - 10,
                              "radius_change_px": 0.0, "read_big": a > 12, "all_kept": True, "centroid_shift_px": 0.1}
                             for i, row in enumerate(areas) for s, a in zip((0.0, 1.0, 2.0), row)])

    r = t2i_section.reweight_summary(frame([[9, 10, 14], [10, 10, 11]]))
    assert r["rises"] and r["never_falls"] and r["seeds_monotone"] == 2 and r["n"] == 2
    assert r["lo"]["read_big"] == 0 and r["hi"]["read_big"] == 0.5
    r = t2i_section.reweight_summary(frame([[10, 10, 14], [10, 10, 11]]))
    assert not r["rises"] and r["never_falls"]
    r = t2i_section.reweight_summary(frame([[10, 12, 9], [10, 10, 11]]))
    assert not r["never_falls"] and r["falls_at"] == (1.0, 2.0) and r["seeds_monotone"] == 1


def test_goal_and_tradeoff_sentences_follow_the_numbers():
    assert t2i_section.meets_goals(0.9, 1.0, 0.8, 0.6, 0.5)["all"]
    assert not t2i_section.meets_goals(0.85, 1.0, 0.8, 0.6, 0.5)["rate"]
    assert not t2i_section.meets_goals(0.9, 1.0, 0.79, 0.6, 0.5)["layout"]
    assert not t2i_section.meets_goals(0.9, 1.0, 0.8, 0.6, 1.5)["shift"]
    rows = [{"edit": "shape_swap", "method": "baseline", "cross_replace_steps": float("nan"), "n": 12, "success": 1.0, "mask_iou": 0.55, "centroid_shift_px": 1.8, "all_kept": 1.0},
            {"edit": "shape_swap", "method": "p2p", "cross_replace_steps": 0.0, "n": 12, "success": 1.0, "mask_iou": 0.56, "centroid_shift_px": 1.7, "all_kept": 1.0},
            {"edit": "shape_swap", "method": "p2p", "cross_replace_steps": 1.0, "n": 12, "success": 0.4, "mask_iou": 0.80, "centroid_shift_px": 0.9, "all_kept": 1.0}]
    (t,) = t2i_section.tradeoff_summary(pd.DataFrame(rows))
    assert t["iou_rises"] and t["success_falls"] and t["meeting"] == []
    rows[2].update(success=0.95)  # contrary numbers: the most injection loses less than the threshold
    (t,) = t2i_section.tradeoff_summary(pd.DataFrame(rows))
    assert not t["success_falls"] and t["meeting"] == [1.0]


# --------------------------------------------------------------------------- attention localisation
def test_inside_outside_means_of_a_map_on_a_mask():
    from diffusion_report.core.attention import inside_outside

    maps = torch.zeros(2, 2, 2, 3)
    maps[0, 0, 0, 1] = 1.0  # token 1 of image 0 attends only to the top-left map cell
    maps[..., 2] = 0.25  # token 2 everywhere alike
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True  # image 0's object is the top-left cell, upsampled 2x
    masks[1] = True  # image 1's object fills it: no outside
    inside, outside = inside_outside(maps, masks)
    assert inside[0].tolist() == [0.0, 1.0, 0.25] and outside[0].tolist() == [0.0, 0.0, 0.25]
    assert inside[1, 2] == 0.25 and torch.isnan(outside[1]).all()
    with pytest.raises(ValueError, match="not a multiple"):
        inside_outside(maps, torch.zeros(2, 5, 5, dtype=torch.bool))


def test_attention_localisation_finds_the_word_whose_map_lies_on_the_object(reader):
    """Drawn images with maps made by hand: the colour word's map is the object's mask (pooled to
    the map size), every other word's is flat, so only the colour word reads as on the object; an
    image whose prompt names another colour than the reader sees is left out."""
    spec = default_spec()
    imgs, masks = shapes.render(spec, ["circle", "square", "triangle"], ["red", "blue", "green"], ["white", "black", "gray"],
                                [7.0, 9.0, 8.0], [8.0, 8.0, 9.0], [5.5, 4.0, 5.0])
    prompts = [shapes.caption("red", "circle", "white"), shapes.caption("blue", "square", "black", "big"),
               shapes.caption("red", "triangle", "gray")]  # the last is green in the image
    records = []
    for prompt, img, mask in zip(prompts, imgs, masks):
        roles = t2i_stage.caption_roles(spec, prompt)
        maps = torch.full((8, 8, 12), 0.25)  # exact in binary: flat maps read exactly 1
        maps[..., roles["colour word"]] = torch.nn.functional.avg_pool2d(mask[None, None].float(), 2)[0, 0]
        records.append((prompt, img, maps))
    df = t2i_stage.attention_localisation(reader, records).set_index("word")
    assert list(df.columns) == t2i_stage.LOCALISATION_COLUMNS[1:]
    assert df.loc["colour word", "images"] == 2 and df.loc["size word", "images"] == 1  # the green triangle is left out
    assert df.loc["colour word", "ratio"] > 10 and df.loc["colour word", "share_above_1"] == 1.0
    for word in ("a", "shape word", "on", "second a", "background colour", "background"):
        assert df.loc[word, "ratio"] == pytest.approx(1.0) and df.loc[word, "share_above_1"] == 0.0
    summary = t2i_section.localisation_summary(df.reset_index())
    assert summary["on"] == ["colour word"] and summary["content_on"] == ["colour word"] and summary["top"] == "colour word"
    assert t2i_section.localisation_summary(df.reset_index().iloc[:0]) is None
    assert t2i_stage.caption_roles(spec, "a red circle") is None


# --------------------------------------------------------------------------- p2p evaluation
def test_evaluation_of_a_tiny_setup_is_reproducible(tmp_path):
    pytest.importorskip("diffusion_report.core.attention")
    from diffusion_report.models.text2image import load_text2image

    cfg = copy.deepcopy(TINY)
    model = t2i.build_model(cfg)
    t2i.save_model(model, tmp_path / "m", t2i.model_config(cfg))
    pipe = load_text2image(tmp_path / "m", config_key="t2i.weights", device="cpu")
    rd = t2i_stage.fit_reader(cfg, 0)
    a, ex = t2i_stage.evaluate_edits(pipe, rd, cfg, 0)
    b, _ = t2i_stage.evaluate_edits(pipe, rd, cfg, 0)
    pd.testing.assert_frame_equal(a, b)
    # the seeds of an edit type run in one batch; one at a time gives the same table up to rounding
    one = copy.deepcopy(cfg)
    one["eval"]["batch_cases"] = 1
    c, _ = t2i_stage.evaluate_edits(pipe, rd, one, 0)
    pd.testing.assert_frame_equal(a, c, check_exact=False, atol=1e-4, rtol=0)
    assert len(a) == 2 * 2 * len(t2i_stage.EDIT_TYPES)
    assert set(a["method"]) == {"p2p", "baseline"}
    s = t2i_stage.summarise(a)
    assert list(s["n"]) == [2] * (2 * len(t2i_stage.EDIT_TYPES))
    # the reweight baseline is the unedited image itself
    rw = a[(a.edit == "reweight_big") & (a.method == "baseline")]
    assert (rw["pixel_mae"] == 0).all() and (rw["mask_iou"] == 1).all()
    # both methods are scored against one source image, sampled once beside the two targets; the
    # stage's earlier way (two batches, each with its own source) gives the same images up to rounding
    for case, imgs in ex.values():
        assert torch.equal(imgs["p2p_source"], imgs["source"])
        _, old = t2i_stage.run_cases(pipe, rd, [case], 0, cfg["eval"]["num_steps"], cfg["eval"]["guidance_scale"],
                                     cfg["eval"]["cross_replace_steps"], cfg["eval"]["self_replace_steps"],
                                     cfg["eval"].get("self_max_tokens"), shared_source=False)[0]
        for key in ("source", "p2p_source", "p2p", "baseline"):
            torch.testing.assert_close(old[key], imgs[key], rtol=0, atol=1e-4)
        torch.testing.assert_close(old["plain_maps"], imgs["plain_maps"], rtol=0, atol=1e-5)


def test_a_clipped_ddim_step_re_derives_the_noise_from_the_clipped_x0():
    """Pixel-space DDIM with clip_sample steps as guided-diffusion's ddim_sample: x_{t'} =
    sqrt(abar_t') x0c + sqrt(1 - abar_t') eps', eps' = (x_t - sqrt(abar_t) x0c) / sqrt(1 - abar_t),
    x0c the clipped x0; diffusers' default (the unclipped eps) is not that where x0 was clipped."""
    from diffusers import DDIMScheduler, PNDMScheduler

    from diffusion_report.models.text2image import step_options

    sched = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2", clip_sample=True)
    sched.set_timesteps(10)
    g = make_generator(0, "test/clipped-step")
    x, eps = torch.randn(2, 3, 4, 4, generator=g), 3.0 * torch.randn(2, 3, 4, 4, generator=g)  # guided: x0 far outside [-1, 1]
    t, t_prev = sched.timesteps[3], sched.timesteps[4]
    a, a_prev = sched.alphas_cumprod[t], sched.alphas_cumprod[t_prev]
    x0c = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
    expected = a_prev.sqrt() * x0c + (1 - a_prev).sqrt() * (x - a.sqrt() * x0c) / (1 - a).sqrt()
    torch.testing.assert_close(sched.step(eps, t, x, **step_options(sched)).prev_sample, expected, rtol=0, atol=1e-5)
    assert (sched.step(eps, t, x).prev_sample - expected).abs().max() > 0.5
    assert step_options(DDIMScheduler(clip_sample=False)) == {} and step_options(PNDMScheduler()) == {}  # latent models: unchanged


# --------------------------------------------------------------------------- shipped weights, rules, report
def test_shipped_weights_match_the_default_config(root):
    import yaml

    cfg = yaml.safe_load((root / "config.yaml").read_text())
    weights = root / cfg["t2i"]["weights"]
    t2i.verify_weights(weights)
    shipped = json.loads((weights / "model" / "t2i_config.json").read_text())
    assert shipped == json.loads(json.dumps(t2i.model_config(t2i.block_config(cfg["t2i"], cfg["seed"]))))
    size = sum(f.stat().st_size for f in weights.rglob("*") if f.is_file())
    assert size < 20 * 2**20


@pytest.mark.slow
def test_rule_functions_and_report_section(tmp_path, root):
    pytest.importorskip("diffusion_report.core.attention")
    from diffusion_report.report import render as report

    cfg = copy.deepcopy(TINY)
    seed = cfg.pop("seed")
    r = tmp_path / "results"
    files = {
        "summary": r / "train_summary.csv", "loss": r / "loss.csv", "loss_plot": r / "loss.png",
        "reader": r / "reader_accuracy.csv", "samples": r / "samples.png", "accuracy": r / "caption_accuracy.csv",
        "eval_summary": r / "eval_summary.csv", "eval_examples": r / "eval_examples.png",
        "localisation": r / "attention_localisation.csv",
    }
    files = {k: str(v) for k, v in files.items()}
    t2i_stage.t2i_train(cfg, seed, {"model": str(r / "model"), "loss": files["loss"], "loss_plot": files["loss_plot"], "summary": files["summary"]}, device="cpu")
    t2i_stage.t2i_reader(cfg, seed, files["reader"])
    t2i_stage.t2i_samples(str(r / "model"), cfg, seed, {"grid": files["samples"], "accuracy": files["accuracy"]})
    t2i_stage.t2i_eval(str(r / "model"), cfg, seed, {"per_seed": str(r / "per_seed.csv"), "summary": files["eval_summary"], "examples": files["eval_examples"],
                                               "localisation": files["localisation"]}, device="cpu")
    acc = pd.read_csv(files["accuracy"])
    assert list(acc["guidance"]) == [1.0, 3.0] and acc["n"].eq(4).all()
    ctx = t2i_section.report_context(files, {"t2i": cfg})
    assert ctx["n_edits"] == len(t2i_stage.EDIT_TYPES) and ctx["summary"]["steps"] == 3
    env = report.environment(root / "report" / "templates")
    html = env.from_string('{% with ctx = c %}{% include "sections/t2i.html.j2" %}{% endwith %}').render(c=ctx)
    assert html.lstrip().startswith('<section id="t2i">') and "<h2>" in html
    loc = pd.read_csv(files["localisation"])
    assert list(loc.columns) == t2i_stage.LOCALISATION_COLUMNS and set(loc["word"]) <= set(t2i_stage.CAPTION_ROLES)
    assert html.count("<figure") == 3 and html.count("<table") == 3 + (ctx["localisation"] is not None)
    assert f"{ctx['summary']['steps']} steps" in html
    # a model trained with captions that name no colour says so, and says what refine_colour edits
    assert "white background&#8221; (the colour word in 75% of the captions; the others name none" in " ".join(html.split())
    assert "The refine_colour edit adds a colour word to a caption that names none" in " ".join(html.split())
    # the per-word schedule of the word swaps is stated where the evaluation's injection is, and only when set
    assert ("swapped-in" in html) == (ctx["eval"].get("edited_word_cross_replace_steps") is not None)
    per_word = env.from_string('{% with ctx = c %}{% include "sections/t2i.html.j2" %}{% endwith %}').render(
        c={**ctx, "eval": {**ctx["eval"], "edited_word_cross_replace_steps": 0.4}})
    assert "% (in a word swap, the swapped-in word's for 40%, the reference's per-word schedule" in " ".join(per_word.split())
    # a one-object model points to the preset whose model draws two (and that one does not)
    assert ctx["two_objects"] == 0 and "CONFIG=presets/two_objects.yaml" in " ".join(html.split())
    two = env.from_string('{% with ctx = c %}{% include "sections/t2i.html.j2" %}{% endwith %}').render(c={**ctx, "two_objects": 0.5})
    assert "presets/two_objects.yaml" not in two and "of two smaller objects, one in each half" in " ".join(two.split())
    # scales that tie for the best caption accuracy are all named, and a re-weighting sweep that keeps every
    # seed says so (the default run at guidance 5: 100% at 2, 3 and 5; kept at every scale)
    sweep = pd.DataFrame([{"scale": sc, "seed_index": i, "source": "", "source_area_px": 10, "area_px": 10 + sc * (i + 1),
                           "area_change_px": sc * (i + 1), "radius_change_px": 0.0, "read_big": True, "all_kept": True,
                           "centroid_shift_px": 0.1} for i in range(2) for sc in (0.0, 1.0, 2.0)])
    tie = {**ctx, "acc_at_g": {**ctx["acc_at_g"], "guidance": 5.0, "all_acc": 1.0}, "acc_best": {**ctx["acc_best"], "guidance": 2.0, "all_acc": 1.0},
           "acc_best_scales": [2.0, 3.0, 5.0], "reweight": t2i_section.reweight_summary(sweep), "reweight_png": files["samples"],
           "reweight_examples": files["samples"], "eval": {**ctx["eval"], "edits": ["shape_swap", "refine_big"]}}  # no refine_colour sentence
    text = " ".join(env.from_string('{% with ctx = c %}{% include "sections/t2i.html.j2" %}{% endwith %}').render(c=tie).split())
    assert "no scale measured does better (100% at guidance 2, 3, 5)" in text and "the best guidance scale measured" not in text
    assert "shape, colour and background are kept in every seed at every scale" in text
    assert "unedited image itself. The injection settings" in text


def test_a_refinement_that_misses_its_rate_names_the_size_it_keeps(root):
    from diffusion_report.report import render as report

    env = report.environment(root / "report" / "templates")

    def text(p_success, p_radius):
        c = {"edit": "refine_big", "p2p_radius": p_radius, "baseline_radius": 0.875,
             "goals": t2i_section.meets_goals(p_success, 0.79, 0.9, 0.66, 0.25)}
        out = env.get_template("sections/t2i_refine.html.j2").render(ctx={"goal_comparisons": [c]})
        assert not out.strip() or out.lstrip("\n").startswith(" Refinement")  # a space from the sentence before it
        return " ".join(out.split())

    assert "its radius changes by 0.21 px on average with prompt-to-prompt against 0.88 px without control" in text(0.42, 0.208)
    assert text(0.75, 0.208) == ""  # the rate is met: no cause to give
    assert text(0.42, 1.2) == ""  # the object grew more than without control: not the cause


def test_grid_column_titles_wrap_to_their_cell(tmp_path, monkeypatch):
    """A title wider than its cell is wrapped (the examples figure's "prompt-to-prompt" and "no
    control" ran together in print); a short one stays on one line."""
    import diffusion_report.io as io_mod

    titles = []
    monkeypatch.setattr(io_mod, "save_figure", lambda path, fig: titles.extend(ax.get_title() for ax in fig.axes[:3]))
    images = [[torch.zeros(3, 16, 16)] * 3 for _ in range(10)]
    t2i_stage.image_grid_figure(tmp_path / "g.png", images, [f"row {i}" for i in range(10)], ["source", "prompt-to-prompt", "no control"], cell=1.0)
    assert titles == ["source", "prompt-to-\nprompt", "no control"]
