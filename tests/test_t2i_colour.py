"""Captions that name no colour, and the refinement that adds one ("a circle" -> "a red circle"):
a refinement that leaves the object's geometry alone, so layout kept and target reached can both
be judged (a size refinement changes the mask it is judged by)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from diffusion_report import config as config_mod
from diffusion_report.io import make_generator
from diffusion_report.models import attributes, shapes, t2i
from diffusion_report.stages import t2i as t2i_stage


def colour_spec(p: float = 0.5) -> shapes.ShapeSpec:
    return shapes.ShapeSpec(colour_word_prob=p)


@pytest.fixture(scope="module")
def reader():
    return attributes.AttributeReader(colour_spec()).fit(600, 0, 0.1)


def test_captions_without_a_colour_word_parse_and_round_trip():
    spec = colour_spec()
    for colour, size in (("red", ""), ("", ""), ("", "big"), ("blue", "small")):
        text = shapes.caption(colour, "circle", "white", size)
        assert shapes.parse_caption(spec, text) == {"size_word": size, "colour": colour, "shape": "circle", "background": "white"}
    assert shapes.caption("", "circle", "white") == "a circle on a white background"
    for bad in ("a red big circle on a white background",  # size after colour
                "a red red circle on a white background", "a circle on a white", "red circle on a white background",
                "a purple circle on a white background", "a on a white background"):
        assert shapes.parse_caption(spec, bad) is None, bad


def test_the_colour_word_is_dropped_at_its_rate_and_the_images_stay_as_they_were():
    full = shapes.sample(shapes.ShapeSpec(), 400, make_generator(0, "c"))
    again = shapes.sample(colour_spec(1.0), 400, make_generator(0, "c"))
    assert torch.equal(full.images, again.images) and full.captions == again.captions and again.colour_named is None
    part = shapes.sample(colour_spec(0.5), 400, make_generator(0, "c"))
    assert torch.equal(part.images, full.images) and part.colour == full.colour  # drawn last: the same objects
    parsed = [shapes.parse_caption(part_spec := colour_spec(0.5), c) for c in part.captions]
    assert all(p is not None for p in parsed)
    assert [bool(p["colour"]) for p in parsed] == part.colour_named
    assert all(p["colour"] in ("", c) for p, c in zip(parsed, part.colour))
    assert 0.4 < np.mean(part.colour_named) < 0.6 and part_spec.vocabulary() == shapes.ShapeSpec().vocabulary()
    with pytest.raises(ValueError, match="colour_word_prob"):
        colour_spec(1.5)


def test_model_config_ignores_a_colour_word_prob_of_one():
    from test_t2i import TINY

    a, b = copy.deepcopy(TINY), copy.deepcopy(TINY)
    a["data"].pop("colour_word_prob")
    b["data"]["colour_word_prob"] = 1.0
    assert t2i.model_config(a) == t2i.model_config(b)  # the shipped weights' recipe stays valid
    assert t2i.model_config(TINY)["data"]["colour_word_prob"] == 0.75


def test_refine_colour_cases_add_a_colour_to_a_colourless_caption():
    spec = colour_spec()
    cases = t2i_stage.edit_cases(spec, "refine_colour", 20, 0, 1.0)
    for c in cases:
        src, tgt = shapes.parse_caption(spec, c.source), shapes.parse_caption(spec, c.target)
        assert src["colour"] == "" and tgt["colour"] == c.target_value in spec.colours
        assert (src["shape"], src["background"]) == (tgt["shape"], tgt["background"])
        assert c.mode == "refine" and c.attribute == "colour" and c.untouched == ("shape", "background")
        assert set(c.source_truth) == {"shape", "background"}  # the source names no colour: any colour is right
    assert len({c.target_value for c in cases}) > 1
    with pytest.raises(ValueError, match="colour_word_prob < 1"):
        t2i_stage.edit_cases(shapes.ShapeSpec(), "refine_colour", 2, 0, 1.0)


def test_refine_colour_is_scored_without_the_sources_colour(reader):
    spec = colour_spec()
    case = t2i_stage.EditCase("refine_colour", 0, shapes.caption("", "circle", "white"), shapes.caption("red", "circle", "white"),
                              "refine", "colour", "red", ("shape", "background"), None, {"shape": "circle", "background": "white"})

    def draw(colour, shape="circle", cx=8.0):
        return shapes.render(spec, [shape], [colour], ["white"], [cx], [8.0], [4.0])[0][0]

    source = draw("blue")  # the model chose blue for "a circle": the source is still as captioned
    good = t2i_stage.score_pair(reader, case, source, draw("red"))
    assert good["source_ok"] and good["success"] and good["all_kept"] and good["mask_iou"] == 1.0
    missed = t2i_stage.score_pair(reader, case, source, draw("green"))
    assert missed["source_ok"] and not missed["success"]
    reshaped = t2i_stage.score_pair(reader, case, source, draw("red", "square"))
    assert reshaped["success"] and not reshaped["all_kept"]
    wrong_source = t2i_stage.score_pair(reader, case, draw("blue", "triangle"), draw("red"))
    assert not wrong_source["source_ok"]
    # a showcased edit of the same form is typed and judged the same way
    edit = {"source": case.source, "target": case.target, "mode": "refine"}
    assert t2i_stage.edit_type(spec, edit) == ("refine_colour", "")
    assert t2i_stage.edit_type(spec, dict(edit, mode="replace"))[0] is None
    v = t2i_stage.judge(reader, "refine_colour", shapes.parse_caption(spec, case.source), shapes.parse_caption(spec, case.target),
                        source, draw("red", cx=8.5))
    assert v["success"] and v["source_ok"] and v["cause"] == ""
    v = t2i_stage.judge(reader, "refine_colour", shapes.parse_caption(spec, case.source), shapes.parse_caption(spec, case.target),
                        source, draw("yellow"))
    assert not v["success"] and "the target colour is not reached (read: yellow)" in v["cause"]


def test_refine_colour_needs_a_model_trained_without_colour_words():
    from test_t2i import TINY

    t2i_cfg = copy.deepcopy(TINY)
    t2i_cfg["eval"]["edits"] = ["colour_swap", "refine_colour"]
    p2p = {"num_inference_steps": 5, "edits": []}
    assert config_mod.t2i_errors(t2i_cfg, p2p) == []
    t2i_cfg["data"]["colour_word_prob"] = 1.0
    errs = config_mod.t2i_errors(t2i_cfg, p2p)
    assert any(e.startswith("t2i.eval.edits: refine_colour starts from captions that name no colour") for e in errs), errs


def test_a_showcased_edit_without_a_colour_word_needs_such_a_model():
    from test_t2i import TINY

    t2i_cfg = copy.deepcopy(TINY)
    edit = {"name": "refine", "source": "a circle on a white background", "target": "a red circle on a white background"}
    p2p = {"num_inference_steps": 5, "edits": [edit]}
    assert config_mod.t2i_errors(t2i_cfg, p2p) == []
    t2i_cfg["data"]["colour_word_prob"] = 1.0
    errs = [e for e in config_mod.t2i_errors(t2i_cfg, p2p) if e.startswith("p2p.")]
    assert errs == ["p2p.edits[0] (refine).source: 'a circle on a white background' names no colour, which this model was not "
                    "trained on (t2i.data.colour_word_prob is 1); name a colour, or set t2i.data.colour_word_prob below 1 and retrain"]
    p2p["edits"] = [dict(edit, source="a blue circle on a white background")]  # both name a colour: fine
    assert not [e for e in config_mod.t2i_errors(t2i_cfg, p2p) if e.startswith("p2p.")]
    # a colour word outside the vocabulary is that error only, not also "names no colour"
    p2p["edits"] = [dict(edit, source="a purple circle on a white background")]
    errs = [e for e in config_mod.t2i_errors(t2i_cfg, p2p) if e.startswith("p2p.")]
    assert len(errs) == 1 and "'purple' not in the embedded model's vocabulary" in errs[0], errs


def test_caption_roles_skip_the_colour_word_when_there_is_none():
    spec = colour_spec()
    with_colour = t2i_stage.caption_roles(spec, shapes.caption("red", "circle", "white"))
    without = t2i_stage.caption_roles(spec, shapes.caption("", "circle", "white"))
    assert with_colour["colour word"] == 2 and with_colour["shape word"] == 3
    assert "colour word" not in without and without["shape word"] == 2 and without["background"] == 6
