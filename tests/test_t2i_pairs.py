"""Two objects per image: the generator, the reader read half by half, the "object not named by the
edit is kept" measure on drawn images, the showcase's verdicts, config errors and the report's sentences."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from diffusion_report import config as config_mod
from diffusion_report.core import attention
from diffusion_report.io import make_generator
from diffusion_report.models import attributes, shapes, t2i
from diffusion_report.report.sections import t2i as t2i_section
from diffusion_report.stages import t2i as t2i_stage


def pair_spec() -> shapes.ShapeSpec:
    return shapes.ShapeSpec(two_objects=0.5, pair_radius=(2.5, 3.25))


@pytest.fixture(scope="module")
def reader():
    return attributes.AttributeReader(pair_spec()).fit(600, 0, 0.1)


def draw(objects, background="white", cx=(4.0, 12.0), cy=(8.0, 8.0), radius=(3.0, 3.0)) -> torch.Tensor:
    spec = pair_spec()
    img, _ = shapes.render_pair(spec, [objects], [background], [list(cx)], [list(cy)], [list(radius)])
    return img[0]


# --------------------------------------------------------------------------- generator
def test_pairs_lie_in_their_halves_and_match_their_captions():
    spec = pair_spec()
    b = shapes.sample_pairs(spec, 48, make_generator(0, "test/pairs"))
    assert b.images.shape == (48, 3, 16, 16) and b.masks.shape == (48, 2, 16, 16)
    half = (16 - shapes.PAIR_GAP) / 2
    assert (b.cx[:, 0] + b.radius[:, 0] <= half + 1e-9).all() and (b.cx[:, 1] - b.radius[:, 1] >= half + shapes.PAIR_GAP - 1e-9).all()
    assert ((b.radius >= 2.5) & (b.radius <= 3.25)).all()
    for i in range(len(b)):
        img = b.images[i].double()
        bg = torch.tensor(shapes.hex_to_rgb(spec.backgrounds[b.background[i]]), dtype=torch.float64).view(3, 1, 1)
        assert not (b.masks[i, 0] & b.masks[i, 1]).any()
        for k, (colour, shape) in enumerate(b.objects[i]):
            fg = torch.tensor(shapes.hex_to_rgb(spec.colours[colour]), dtype=torch.float64).view(3, 1, 1)
            m = b.masks[i, k]
            margin = ((img - bg) ** 2).sum(0).sqrt() - ((img - fg) ** 2).sum(0).sqrt()
            assert (margin[m] > 1e-4).all(), f"image {i} object {k}: mask disagrees with pixels"
            xs = torch.nonzero(m, as_tuple=True)[1]
            assert (xs < 8).all() if k == 0 else (xs >= 8).all()
        parsed = shapes.parse_pair_caption(spec, b.captions[i])
        assert parsed == {"objects": [tuple(o) for o in b.objects[i]], "background": b.background[i]}
        assert shapes.parse_caption(spec, b.captions[i]) is None  # not a one-object caption
    for bad in ("a red circle and a blue square", "a red circle and a purple square on a white background",
                "a red circle or a blue square on a white background", shapes.caption("red", "circle", "white")):
        assert shapes.parse_pair_caption(spec, bad) is None, bad


def test_mixed_batches_hold_pairs_at_the_configured_rate_and_one_object_draws_stay_as_they_were():
    one = shapes.ShapeSpec()
    images, captions = shapes.sample_mixed(one, 16, make_generator(0, "m"))
    b = shapes.sample(one, 16, make_generator(0, "m"))
    assert torch.equal(images, b.images) and captions == b.captions  # two_objects 0: the one-object generator's draws
    spec = pair_spec()
    images, captions = shapes.sample_mixed(spec, 400, make_generator(0, "m"))
    again, captions2 = shapes.sample_mixed(spec, 400, make_generator(0, "m"))
    assert torch.equal(images, again) and captions == captions2
    pairs = [shapes.parse_pair_caption(spec, c) is not None for c in captions]
    singles = [shapes.parse_caption(spec, c) is not None for c in captions]
    assert all(p != s for p, s in zip(pairs, singles))
    assert 0.4 < np.mean(pairs) < 0.6


def test_the_pair_word_is_appended_so_one_object_token_ids_stay():
    assert shapes.ShapeSpec().vocabulary() == pair_spec().vocabulary()[:-1] and pair_spec().vocabulary()[-1] == "and"
    tok = t2i.build_tokenizer(pair_spec().vocabulary(), 16)
    ids = t2i.tokenize(tok, [shapes.pair_caption([("red", "circle"), ("blue", "square")], "white")])[0].tolist()
    assert len([i for i in ids if i > 3]) == 11 and 3 not in ids  # 11 known words, no unknown token
    with pytest.raises(ValueError, match=r"pair_radius .* <= 3.75"):
        shapes.ShapeSpec(two_objects=0.5, pair_radius=(2.5, 4.0))


def test_model_config_of_one_object_data_ignores_the_pair_keys():
    """A one-object recipe is the same with or without the pair keys (the shipped weights' config
    stays valid); with two_objects > 0 they name the recipe."""
    from test_t2i import TINY

    a = copy.deepcopy(TINY)
    b = copy.deepcopy(TINY)
    b["data"].update(two_objects=0.0, pair_radius=[2.0, 3.0])
    assert t2i.model_config(a) == t2i.model_config(b)
    b["data"]["two_objects"] = 0.5
    assert t2i.model_config(b)["data"]["two_objects"] == 0.5 and t2i.model_config(b)["data"]["pair_radius"] == [2.0, 3.0]


# --------------------------------------------------------------------------- reader
def test_the_reader_reads_each_object_of_a_pair(reader):
    rows = attributes.reader_accuracy(reader, 100, 1, noise_levels=(0.0, 0.1))
    assert list(rows["objects"]) == [1, 1, 2, 2] and list(rows["n"]) == [100, 100, 200, 200]
    for row in rows[rows["objects"] == 2].to_dict("records"):
        assert row["shape_acc"] >= 0.95 and row["colour_acc"] >= 0.99 and row["background_acc"] == 1.0, row
        assert row["mask_iou"] >= 0.85 and row["centre_err_px"] < 0.5, row
    left, right = reader.read_pair(draw([("red", "circle"), ("blue", "square")], "gray", cx=(3.5, 12.5), cy=(5.0, 11.0)))
    assert (left.colour, left.shape, right.colour, right.shape) == ("red", "circle", "blue", "square")
    assert left.background == right.background == "gray"
    assert left.cx == pytest.approx(3.5, abs=0.2) and right.cx == pytest.approx(12.5, abs=0.2)
    assert left.cy == pytest.approx(5.0, abs=0.2) and right.cy == pytest.approx(11.0, abs=0.2)


# --------------------------------------------------------------------------- the "other object kept" measure
def test_the_object_the_edit_does_not_name_is_scored_on_drawn_images(reader):
    spec = pair_spec()
    source = draw([("red", "circle"), ("blue", "square")])
    truth = {"objects": [("red", "circle"), ("blue", "square")], "background": "white"}
    case = t2i_stage.EditCase("pair_colour_swap", 0, shapes.pair_caption(truth["objects"], "white"),
                             shapes.pair_caption([("red", "circle"), ("green", "square")], "white"), "replace", "colour", "green",
                             ("shape", "background", "other"), None, truth, 1)

    def score(objects, **kw):
        return t2i_stage.score_pair(reader, case, source, draw(objects, **kw))

    good = score([("red", "circle"), ("green", "square")])
    assert good["source_ok"] and good["success"] and good["other_kept"] == 1.0 and good["all_kept"] and good["mask_iou"] == 1.0
    nudged = score([("red", "circle"), ("green", "square")], cx=(4.5, 12.0))  # the other object moves 0.5 px: kept
    assert nudged["other_kept"] == 1.0
    moved = score([("red", "circle"), ("green", "square")], cx=(5.5, 12.0))  # 1.5 px: not in place
    assert moved["success"] and moved["other_kept"] == 0.0 and not moved["all_kept"]
    recoloured = score([("yellow", "circle"), ("green", "square")])
    assert recoloured["success"] and recoloured["other_kept"] == 0.0
    reshaped = score([("red", "triangle"), ("green", "square")])
    assert reshaped["other_kept"] == 0.0
    missed = score([("red", "circle"), ("blue", "square")])
    assert not missed["success"] and missed["other_kept"] == 1.0
    swapped_shape = score([("red", "circle"), ("green", "triangle")])  # the edited object's other attribute changes
    assert swapped_shape["success"] and swapped_shape["other_kept"] == 1.0 and not swapped_shape["all_kept"]
    assert swapped_shape["untouched_kept"] == pytest.approx(2 / 3)
    # cases drawn for the evaluation: one object changes its attribute, the other and the background stay
    for c in t2i_stage.edit_cases(spec, "pair_shape_swap", 12, 0, 1.0):
        src, tgt = shapes.parse_pair_caption(spec, c.source), shapes.parse_pair_caption(spec, c.target)
        assert src["objects"][1 - c.obj] == tgt["objects"][1 - c.obj] and src["background"] == tgt["background"]
        assert src["objects"][c.obj][0] == tgt["objects"][c.obj][0] and tgt["objects"][c.obj][1] == c.target_value != src["objects"][c.obj][1]
    assert {c.obj for c in t2i_stage.edit_cases(spec, "pair_colour_swap", 12, 0, 1.0)} == {0, 1}
    with pytest.raises(ValueError, match="two_objects > 0"):
        t2i_stage.edit_cases(shapes.ShapeSpec(), "pair_colour_swap", 2, 0, 1.0)


def test_showcased_pair_edits_are_typed_and_judged(reader):
    spec = pair_spec()
    src = shapes.pair_caption([("red", "circle"), ("blue", "square")], "white")

    def kind(tgt, mode="replace"):
        return t2i_stage.edit_type(spec, {"source": src, "target": tgt, "mode": mode})

    assert kind(shapes.pair_caption([("red", "circle"), ("green", "square")], "white")) == ("pair_colour_swap", "")
    assert kind(shapes.pair_caption([("red", "triangle"), ("blue", "square")], "white")) == ("pair_shape_swap", "")
    none, why = kind(shapes.pair_caption([("green", "circle"), ("green", "square")], "white"))
    assert none is None and "object 1's colour, object 2's colour" in why
    none, why = kind(shapes.pair_caption([("red", "circle"), ("blue", "square")], "gray"))
    assert none is None and "background" in why
    caps = [shapes.parse_pair_caption(spec, c) for c in (src, shapes.pair_caption([("red", "circle"), ("green", "square")], "white"))]
    source = draw([("red", "circle"), ("blue", "square")])
    ok = t2i_stage.judge_pair(reader, "pair_colour_swap", *caps, source, draw([("red", "circle"), ("green", "square")]))
    assert ok["success"] and ok["cause"] == "" and ok["untouched_kept"]
    bad = t2i_stage.judge_pair(reader, "pair_colour_swap", *caps, source, draw([("red", "circle"), ("green", "square")], cy=(10.0, 8.0)))
    assert not bad["success"] and bad["reached"] and "the left object, which the edit does not name, changed or moved" in bad["cause"]
    assert "2.0 px" in bad["cause"]


# --------------------------------------------------------------------------- config and report
def test_pair_edit_types_need_a_two_object_model():
    from test_t2i import TINY

    t2i_cfg = copy.deepcopy(TINY)
    t2i_cfg["eval"]["edits"] = ["colour_swap", "pair_colour_swap"]
    p2p = {"num_inference_steps": 5, "edits": []}
    errs = config_mod.t2i_errors(t2i_cfg, p2p)
    assert any(e.startswith("t2i.eval.edits: pair_colour_swap edit two-object captions") for e in errs), errs
    t2i_cfg["data"].update(image_size=16, two_objects=0.5, pair_radius=[2.5, 3.25])
    errs = config_mod.t2i_errors(t2i_cfg, p2p)
    assert any(e.startswith("t2i.model.max_length: 12 cannot hold a two-object caption") for e in errs), errs
    t2i_cfg["model"]["max_length"] = 16
    assert config_mod.t2i_errors(t2i_cfg, p2p) == []
    t2i_cfg["data"]["pair_radius"] = [2.5, 4.0]
    assert any(e.startswith("t2i.data.pair_radius: [2.5, 4.0] needs min <= max <= 3.75") for e in config_mod.t2i_errors(t2i_cfg, p2p))
    assert "and" in config_mod.embedded_vocabulary(t2i_cfg) and "and" not in config_mod.embedded_vocabulary(TINY)


def test_pair_goal_sentences_follow_the_numbers():
    assert t2i_section.meets_pair_goals(0.9, 1.0, 0.9)["all"]
    assert not t2i_section.meets_pair_goals(0.9, 1.0, 0.85)["other"]
    assert not t2i_section.meets_pair_goals(0.8, 1.0, 0.95)["rate"]
    assert not t2i_section.meets_pair_goals(1.0, 1.0, float("nan"))["other"]
    ctx = {"comparisons": [{"edit": "pair_colour_swap", "n": 24, "p2p_success": 1.0, "baseline_success": 1.0, "p2p_other": 0.95,
                            "baseline_other": 0.25}], "n_edits": 1, "n_better_iou": 1, "n_better_success": 0, "n_goal_types": 0}
    ctx["pair_comparisons"] = ctx["comparisons"]
    ctx["n_pair_goals"] = 1
    text = " ".join(t2i_section.answer(ctx, {})["sentences"])
    assert "keeps its shape, colour and place (centroid within 1 px) in 95% of the pair_colour_swap seeds (without control: 25%)" in text
    assert "is met by 1 of the 1 two-object edit types" in text


def test_the_other_object_is_also_scored_over_the_seeds_whose_source_is_right(root):
    from diffusion_report.report import render as report

    rows = [{"edit": "pair_colour_swap", "method": m, "source_ok": ok, "success": True, "all_kept": kept, "untouched_kept": 1.0,
             "mask_iou": 1.0, "centroid_shift_px": 0.0, "radius_change_px": 0.0, "pixel_mae": 0.0, "other_kept": float(kept)}
            for m in ("p2p", "baseline") for ok, kept in ((True, True), (True, True), (True, m == "p2p"), (False, False))]
    summary = t2i_stage.summarise(pd.DataFrame(rows)).set_index("method")
    assert summary.loc["p2p", "other_kept"] == 0.75 and summary.loc["p2p", "other_kept_source_ok"] == 1.0
    assert summary.loc["baseline", "other_kept"] == 0.5 and summary.loc["baseline", "other_kept_source_ok"] == pytest.approx(2 / 3)
    assert t2i_section.pair_losses(0.75, 24, 11 / 12, 12) == (6, 5) and t2i_section.pair_losses(0.5, 4, float("nan"), 0) == (2, 2)
    one = t2i_stage.summarise(pd.DataFrame([dict(r, edit="shape_swap", other_kept=float("nan")) for r in rows]))
    assert one["other_kept_source_ok"].isna().all()

    from markupsafe import escape

    def paragraph(p_other, p_other_ok, pair_settings=""):
        c = {"edit": "pair_colour_swap", "n": 24, "p2p_success": 1.0, "baseline_success": 1.0, "p2p_other": p_other, "baseline_other": 0.5,
             "p2p_other_ok": p_other_ok, "baseline_other_ok": 0.6, "n_source_ok": 12,
             "pair_goals": t2i_section.meets_pair_goals(1.0, 1.0, p_other, p_other_ok), "losses": 6, "losses_elsewhere": 5}
        ctx = {"pair_comparisons": [c, c], "goal": {"rate": 0.9, "shift": 1.0, "other": t2i_section.GOAL_OTHER_KEPT},
               "pair_settings": pair_settings}
        env = report.environment(root / "report" / "templates")
        return " ".join(env.get_template("sections/t2i_pairs.html.j2").render(ctx=ctx).split())

    text = paragraph(0.75, 0.95)
    assert "drew otherwise than captioned. pair_colour_swap: other object kept" in text  # the two edit types' sentences apart
    assert "goal missed" in text and "Over the 12 seeds whose source the reader finds as captioned, the other object is kept in 95%" in text
    # "the&nbsp;6": WeasyPrint 70 set the count alone on a line of its own when the line broke between "the" and it
    assert "at least the goal's 90%: 5 of the&nbsp;6 seeds that lose it are among the 12 whose source the model drew otherwise" in text
    assert "seeds that lose it" not in paragraph(0.75, 0.8)  # kept too rarely where the source is right: no such claim
    assert "goal met" in paragraph(0.95, 0.95) and "seeds that lose it" not in paragraph(0.95, 0.95)
    # t2i.eval.two_object: the pair edits' own settings are stated where they are set, and only there
    assert "settings of their own" not in text
    own = t2i_section.two_object_settings({"two_object": {"self_replace_steps": 0.5, "blend_threshold": 0.6}})
    assert own == ("self-attention injected during the first 50% of the steps and a local blend on the edited object's colour and "
                   "shape words, found by their place in the caption since one word may name both objects, at mask threshold 0.6, so "
                   "that outside the mask the edit keeps the source")
    # autoescaped (object&#39;s), a sentence of its own between the goal and the first edit type's
    assert f"as often as without control. These edits have settings of their own: {escape(own)}. pair_colour_swap:" in paragraph(0.95, 0.95, own)
    assert "as often as without control. pair_colour_swap:" in paragraph(0.95, 0.95)
    assert t2i_section.two_object_settings({"two_object": {"self_replace_steps": None, "blend_threshold": 0.5}}).startswith("a local blend")
    assert t2i_section.two_object_settings({"two_object": {"self_replace_steps": None, "blend_threshold": None}}) == ""


# --------------------------------------------------------------------------- drawn two-object images (editing given images)
PAIR_DRAW = {"background": "white", "objects": [{"shape": "circle", "colour": "red", "cx": 3.5, "cy": 8.0, "radius": 3.0},
                                                {"shape": "square", "colour": "blue", "cx": 12.0, "cy": 9.0, "radius": 3.0}]}
PAIR_DATA = {"image_size": 16, "shapes": ["circle", "square", "triangle"], "colours": dict(shapes.ShapeSpec().colours),
             "backgrounds": dict(shapes.ShapeSpec().backgrounds), "radius": [3.0, 6.0], "small_below": 3.8, "big_above": 5.2,
             "size_word_prob": 0.5, "two_objects": 0.5, "pair_radius": [2.5, 3.25]}


def test_drawn_pair_cases_are_the_generators_pairs_and_read_as_captioned(reader):
    cases, images = t2i_stage.drawn_cases(pair_spec(), "pair_shape_swap", 8, seed=4)
    b = shapes.sample_pairs(pair_spec(), 8, make_generator(4, "t2i/real_eval/pair_shape_swap"))
    assert torch.equal(images, b.images) and [c.source for c in cases] == b.captions
    assert {c.obj for c in cases} <= {0, 1} and all(c.edit == "pair_shape_swap" and c.attribute == "shape" for c in cases)
    for c, img in zip(cases, images):
        tgt = shapes.parse_pair_caption(pair_spec(), c.target)
        assert tgt["objects"][c.obj][1] == c.target_value != c.source_truth["objects"][c.obj][1]
        assert tgt["objects"][1 - c.obj] == c.source_truth["objects"][1 - c.obj]
    # scored against itself: the drawn source is read as captioned, the target is not reached, the other object is kept
    scores = [t2i_stage.score_pair(reader, c, img, img) for c, img in zip(cases, images)]
    assert sum(s["source_ok"] for s in scores) >= 7 and not any(s["success"] for s in scores)
    assert all(s["other_kept"] == 1.0 for s in scores)
    with pytest.raises(ValueError, match="p2p.real_eval.edits: pair_colour_swap needs a model trained on two-object captions"):
        t2i_stage.drawn_cases(shapes.ShapeSpec(), "pair_colour_swap", 2, seed=4)


def test_two_object_settings_give_pair_cases_a_blend_on_the_edited_objects_words_by_place():
    """t2i.eval.two_object: a two-object case gets its own self-attention window and a local blend on
    the edited object's colour and shape tokens, found by place (a colour word shared by both objects
    must not blend the other one); one-object cases and an empty block keep the common settings."""
    from types import SimpleNamespace

    pipe = SimpleNamespace(tokenizer=t2i.build_tokenizer(pair_spec().vocabulary(), 16))
    cases, _ = t2i_stage.drawn_cases(pair_spec(), "pair_colour_swap", 24, seed=0)
    shared = [c for c in cases if c.source_truth["objects"][0][0] == c.source_truth["objects"][1][0]]
    assert {c.obj for c in shared} == {0, 1}  # both objects edited among the cases whose colour word names both
    settings = {"self_replace_steps": 0.5, "blend_threshold": 0.6}
    for c in shared:
        ctrl = t2i_stage.case_controller(pipe, c, 10, 0.8, 0.8, two_object=settings)
        tokens = [2, 3] if c.obj == 0 else [6, 7]  # <bos>, then one token per word
        assert ctrl.local_blend.alpha.nonzero()[:, 1].tolist() == tokens * 2 and ctrl.local_blend.threshold == 0.6
        assert ctrl.self_window == attention.step_window(0.5, 10)
        plain = t2i_stage.case_controller(pipe, c, 10, 0.8, 0.8, two_object={"self_replace_steps": None, "blend_threshold": None})
        assert plain.local_blend is None and plain.self_window == attention.step_window(0.8, 10)
    one = t2i_stage.edit_cases(pair_spec(), "colour_swap", 1, 0, 3.0)[0]
    ctrl = t2i_stage.case_controller(pipe, one, 10, 0.8, 0.8, two_object=settings)
    assert ctrl.local_blend is None and ctrl.self_window == attention.step_window(0.8, 10)
    with pytest.raises(ValueError, match="not a two-object case"):
        t2i_stage.pair_object_words(one)


def test_a_blended_pair_edit_keeps_the_source_outside_the_edited_objects_mask(tmp_path):
    """The evaluation's pair cases sampled with the two-object blend (tiny random model of the
    embedded architecture): outside each case's mask the edited image is the source's, inside it is
    not (the edit acts there)."""
    from diffusion_report.models.text2image import generate, load_text2image

    cfg = {"seed": 0, "data": PAIR_DATA, "schedule": {"kind": "cosine", "T": 50, "clip_sample": True},
           "model": {"channels": [16, 32], "attention_levels": 2, "layers_per_block": 1, "attention_heads": 2, "text_width": 16,
                     "text_layers": 0, "text_heads": 2, "max_length": 16}, "training": {}}
    t2i.save_model(t2i.build_model(cfg), tmp_path / "m", t2i.model_config(cfg))
    pipe = load_text2image(str(tmp_path / "m"), config_key="t2i.weights", device="cpu", scheduler="ddim")
    cases = t2i_stage.edit_cases(pair_spec(), "pair_shape_swap", 2, 0, 3.0)
    ctrl = t2i_stage.case_controllers(pipe, cases, 4, 0.8, 0.0, two_object={"blend_threshold": 0.9})
    prompts, x_T = t2i_stage.case_batch(pipe, cases, 0)
    images, _ = generate(pipe, prompts, x_T, 4, 2.0, ctrl)
    for i, c in enumerate(ctrl.controllers):
        mask = c.local_blend.last_mask[1, 0]
        assert 0 < int(mask.sum()) < mask.numel()
        source, edited = images[2 * i], images[2 * i + 1]
        assert torch.equal(source[:, ~mask], edited[:, ~mask])
        assert not torch.equal(source[:, mask], edited[:, mask])


@pytest.fixture
def one_thread():
    """The tiny model's ops are too small to share between threads (see test_inversion)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_drawn_two_object_image_is_inverted_edited_and_judged_object_by_object(reader, tmp_path, one_thread):
    """p2p_real_edit on a drawing of two objects: the input is render_pair's, its truth the drawing, and
    each two-object edit is judged by judge_pair against the drawing (the tiny model is random, so the
    verdict's parts, not its success, are asserted); an edit whose prompts name one object is not measured."""
    from diffusion_report.stages import p2p
    from diffusion_report.testing import tiny_pipe

    entry = {"name": "pair", "image": {"draw": PAIR_DRAW}, "prompt": "a red circle and a blue square on a white background",
             "guidance_scale": 2.0, "num_inversion_steps": 3, "null_text": {"inner_steps": 2, "learning_rate": 0.1, "early_stop": 1e-5},
             "edits": [{"name": "right_red", "target": "a red circle and a red square on a white background", "mode": "replace"}]}
    image, truth, source = p2p.real_input(entry, PAIR_DATA)
    expected, _ = shapes.render_pair(pair_spec(), [[("red", "circle"), ("blue", "square")]], ["white"], [[3.5, 12.0]], [[8.0, 9.0]], [[3.0, 3.0]])
    assert torch.equal(image, expected[0]) and source == "drawn"
    assert truth == {"objects": [("red", "circle"), ("blue", "square")], "background": "white"}
    names = {"inversion": "inversion.safetensors", "metrics": "metrics.csv", "timing": "timing.csv", "edits": "edits"}
    out = {k: str(tmp_path / names.get(k, f"{k}.png")) for k in p2p.REAL_ARTIFACTS}
    df, _ = p2p.real_edit(tiny_pipe(), reader, entry, truth, source, image, out)
    row = df[df["kind"] == "edit"].iloc[0]
    assert row["edit_type"] == "pair_colour_swap" and bool(row["measured"]) and bool(row["source_ok"])  # the drawing is the truth
    from PIL import Image

    edited = torch.from_numpy(np.asarray(Image.open(tmp_path / "edits" / "right_red.png"), dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
    verdict = t2i_stage.judge_pair(reader, "pair_colour_swap", truth, shapes.parse_pair_caption(pair_spec(), entry["edits"][0]["target"]),
                                   image, edited)
    assert {k: row[k] for k in ("reached", "untouched_kept", "success")} == {k: verdict[k] for k in ("reached", "untouched_kept", "success")}
    # a one-object drawing under a two-object prompt: the verdict would compare different things, so none is given
    single = dict(entry, name="single", image={"draw": {"shape": "circle", "colour": "red", "background": "white", "cx": 8.0, "cy": 8.0,
                                                        "radius": 4.0}})
    image1, truth1, _ = p2p.real_input(single, PAIR_DATA)
    df1, _ = p2p.real_edit(tiny_pipe(), reader, single, truth1, "drawn", image1, {k: str(tmp_path / "one" / Path(v).name) for k, v in out.items()})
    row1 = df1[df1["kind"] == "edit"].iloc[0]
    assert not bool(row1["measured"]) and row1["cause"] == "the input shows one object, the edit's prompts two"


def test_config_takes_two_object_drawings_and_names_what_is_wrong():
    import yaml

    from diffusion_report.config import ConfigError, validate_config
    from diffusion_report.testing import ROOT

    base = yaml.safe_load((ROOT / "config.yaml").read_text())
    base["t2i"].update(train=True)
    base["t2i"]["data"].update(two_objects=0.5, pair_radius=[2.5, 3.25])
    base["t2i"]["model"]["max_length"] = 16
    entry = base["p2p"]["real_edits"][0]
    entry.update(image={"draw": copy.deepcopy(PAIR_DRAW)}, prompt="a red circle and a blue square on a white background",
                 edits=[{"name": "c", "target": "a red circle and a green square on a white background", "mode": "replace"}])
    base["p2p"]["real_eval"]["edits"] = ["shape_swap", "pair_colour_swap"]

    def errors(change=None):
        cfg = copy.deepcopy(base)
        if change:
            change(cfg)
        try:
            validate_config(cfg, ROOT / "schemas" / "config.schema.yaml", base_dir=ROOT, workflow_dir=ROOT)
        except ConfigError as exc:
            return str(exc)
        return ""

    assert errors() == ""
    draw = lambda c: c["p2p"]["real_edits"][0]["image"]["draw"]  # noqa: E731
    key = "p2p.real_edits[0] (red_circle).image.draw"
    assert f"{key}.objects[0].cx: 6 puts the shape (radius 3) outside the left half (0..7.5); allowed 3..4.5" in errors(
        lambda c: draw(c)["objects"][0].update(cx=6.0))
    assert f"{key}.objects[1].cx: 8 puts the shape (radius 3) outside the right half (8.5..16); allowed 11.5..13" in errors(
        lambda c: draw(c)["objects"][1].update(cx=8.0))
    assert f"{key}.objects[1].colour: 'pink' is not in t2i.data" in errors(lambda c: draw(c)["objects"][1].update(colour="pink"))
    assert f"{key}.background: 'teal' is not in t2i.data" in errors(lambda c: draw(c).update(background="teal"))
    both = errors(lambda c: draw(c).update(shape="circle", colour="red"))
    assert "p2p.real_edits[0].image.draw: one object needs shape, colour, cx, cy and radius; two objects need objects" in both
    assert "it has objects and shape, colour" in both
    assert "p2p.real_edits[0].image.draw.objects[1]: 'radius' is a required property" in errors(lambda c: draw(c)["objects"][1].pop("radius"))
    assert "is too short" in errors(lambda c: draw(c)["objects"].pop())
    one_object = lambda c: c["t2i"]["data"].update(two_objects=0.0)  # noqa: E731
    msg = errors(one_object)
    assert f"{key}.objects: a two-object drawing needs a model trained on two-object captions" in msg
    assert "p2p.real_eval.edits: pair_colour_swap draw two objects, which this model was not trained on" in msg
    from diffusion_report import config

    assert config.PAIR_GAP == shapes.PAIR_GAP  # validation keeps its own copy (it imports no torch)


def test_the_report_describes_a_two_object_drawing_and_the_other_object_kept(tmp_path):
    from test_inversion import _real_eval_files

    from diffusion_report.report.sections import p2p as section

    assert section.describe_drawing(PAIR_DRAW) == ("two objects: a red circle of half-extent 3 px centred at (3.5, 8) in the left half "
                                                   "and a blue square of half-extent 3 px centred at (12, 9) in the right half, on white")
    assert section.describe_drawing({"shape": "circle", "colour": "red", "background": "gray", "cx": 7.5, "cy": 8.5, "radius": 4.5}) == (
        "a red circle of half-extent 4.5 px centred at (7.5, 8.5) on gray")
    assert "centred at (12.25, 8.5)" in section.describe_drawing({**PAIR_DRAW, "objects": [PAIR_DRAW["objects"][0], {**PAIR_DRAW["objects"][1], "cx": 12.25, "cy": 8.5}]})  # config values, not rounded
    files = _real_eval_files(tmp_path, 0.7, 0.75)
    ev = section.real_eval_context(files, {})
    assert "other object kept, drawn" not in ev["rows"][0]  # one-object types only: no such column
    summary = pd.read_csv(files["real_eval_summary"])
    pair = summary.assign(edit="pair_colour_swap", other_kept=[0.625, 0.5])
    pd.concat([summary, pair]).to_csv(files["real_eval_summary"], index=False)
    rows = {r["edit type"]: r for r in section.real_eval_context(files, {})["rows"]}
    assert rows["pair_colour_swap"]["other object kept, drawn"] == 0.625 and rows["shape_swap"]["other object kept, drawn"] == ""


def test_the_two_object_preset_installs_its_shipped_weights(root, tmp_path):
    """presets/two_objects.yaml is valid, and rule t2i_train's install path accepts models/t2i-pairs for it:
    checksums, and the recipe in the weights equal to the preset's (a drifted key would ask for a retrain)."""
    import json

    import yaml
    from snakemake.utils import update_config  # what --configfile does: mappings merge key by key, lists replace

    cfg = yaml.safe_load((root / "config.yaml").read_text())
    update_config(cfg, yaml.safe_load((root / "presets" / "two_objects.yaml").read_text()))
    config_mod.validate_config(cfg, root / "schemas" / "config.schema.yaml", base_dir=root)  # fills the schema's defaults, as the workflow does
    assert any("objects" in e["image"].get("draw", {}) for e in cfg["p2p"]["real_edits"] if isinstance(e["image"], dict))
    weights = root / cfg["t2i"]["weights"]
    out = {k: str(tmp_path / n) for k, n in (("model", "model"), ("loss", "loss.csv"), ("loss_plot", "loss.png"), ("summary", "s.csv"))}
    row = t2i_stage.t2i_train(cfg["t2i"], cfg["seed"], out, weights_dir=weights)
    assert row["steps"] == 10000 and json.loads((tmp_path / "model" / "t2i_config.json").read_text())["data"]["two_objects"] == 0.5
    assert sum(f.stat().st_size for f in weights.rglob("*") if f.is_file()) < 20 * 2**20
    one_object = copy.deepcopy(cfg["t2i"])
    one_object["data"]["two_objects"] = 0.0
    with pytest.raises(ValueError, match="different config"):
        t2i_stage.t2i_train(one_object, cfg["seed"], {k: v + "2" for k, v in out.items()}, weights_dir=weights)


def test_pair_edit_words_reads_the_edited_and_the_other_objects_word():
    from diffusion_report.report.sections import p2p as section

    src = "a red square and a red circle on a black background"
    assert section.pair_edit_words(src, "a red square and a green circle on a black background") == ("red", "green", "red")
    assert section.pair_edit_words(src, "a red triangle and a red circle on a black background") == ("square", "triangle", "circle")
    assert section.pair_edit_words(src, src) is None  # nothing edited
    assert section.pair_edit_words(src, "a red square and a red circle on a white background") is None  # the background, not an object
    assert section.pair_edit_words("a red circle on a white background", "a blue circle on a white background") is None


def _pair_per_image(tmp_path, kept_shared, kept_rest):
    """Drawn pair colour swaps: len(kept_shared) whose edited word also names the other object, then the rest."""
    shared = ("a red square and a red circle on a black background", "a red square and a green circle on a black background")
    rest = ("a blue square and a yellow circle on a white background", "a blue square and a green circle on a white background")
    rows = [{"edit": "pair_colour_swap", "seed_index": i, "method": m, "source": s, "target": t, "psnr_ddim": 30.0,
             "psnr_null_text": 47.0, "other_kept": float(k if m == "p2p" else 1)}
            for i, ((s, t), k) in enumerate([(shared, k) for k in kept_shared] + [(rest, k) for k in kept_rest]) for m in ("p2p", "baseline")]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("kept_shared, kept_rest, halves", [
    ([0, 0, 1, 1], [1, 1, 1, 1], True),   # 6 of 8 kept, both lost where the word is shared (50% of 4 there)
    ([1, 1, 1, 1], [0, 1, 1, 1], False),  # 7 of 8 kept: below the goal, said too
    ([1, 1, 1, 1], [1, 1, 1, 1], False),  # all kept: nothing to explain
], ids=["shared-losses", "one-loss", "none-lost"])
def test_the_report_counts_where_drawn_pairs_lose_the_other_object(tmp_path, kept_shared, kept_rest, halves):
    from test_inversion import _real_eval_files

    from diffusion_report.report.sections import p2p as section

    per = _pair_per_image(tmp_path, kept_shared, kept_rest)
    split = section.shared_word_split(per, "pair_colour_swap")
    assert split["shared"] == (4, sum(kept_shared)) and split["rest"] == (4, sum(kept_rest))
    assert split["lost"] == 8 - sum(kept_shared) - sum(kept_rest) and split["lost_shared"] == 4 - sum(kept_shared)
    files = _real_eval_files(tmp_path, 0.7, 0.75)
    summary = pd.read_csv(files["real_eval_summary"])
    kept = (sum(kept_shared) + sum(kept_rest)) / 8
    summary.assign(edit="pair_colour_swap", other_kept=[kept, 1.0]).to_csv(files["real_eval_summary"], index=False)
    per.to_csv(files["real_eval_per_image"], index=False)
    text = " ".join(section.real_eval_context(files, {})["text"])
    lost = 8 - sum(kept_shared) - sum(kept_rest)
    expected = (f"Pair colour swap loses the other object in {lost} of 8 drawn images, {4 - sum(kept_shared)} of them images where the "
                f"edited word, before or after the edit, also names the other object")
    # said whenever the other object is kept below the goal (90%): here 6/8 and 7/8
    assert (expected in text) == (lost > 0), text
    if halves:
        assert "there the other object is kept in 50% of 4 images, elsewhere in 100% of 4" in text
    # the drawn pairs' own settings (t2i.eval.two_object) are named beside the common ones; one-object types have none
    own = {"two_object": {"self_replace_steps": 0.5, "blend_threshold": 0.5}}
    assert section.real_eval_context(files, own)["settings"]["two_object"] == t2i_section.two_object_settings(own) != ""
    per.assign(edit="colour_swap").to_csv(files["real_eval_per_image"], index=False)
    summary.assign(edit="colour_swap").to_csv(files["real_eval_summary"], index=False)
    assert section.real_eval_context(files, own)["settings"]["two_object"] == ""
