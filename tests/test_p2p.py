"""Prompt-to-prompt: token mappings, controllers, attention routing and the edit stage.

Tiny Stable-Diffusion-shaped parts are built in code (no download): a CLIP BPE tokenizer from a
small vocabulary, a small CLIPTextModel, a UNet2DConditionModel with cross-attention at two
resolutions and, for the latent-space tests, a small AutoencoderKL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from diffusion_report.core import attention, prompts
from diffusion_report.models.text2image import (
    Text2Image,
    encode_prompts,
    generate,
    initial_latents,
    load_text2image,
    tokenize,
)
from diffusion_report.report.sections import p2p as p2p_section
from diffusion_report.stages import p2p as p2p_stage
from diffusion_report.testing import MAX_LEN, tiny_pipe, tiny_tokenizer

STEPS = 6


@pytest.fixture(scope="module")
def _pipe_template():
    return tiny_pipe()


@pytest.fixture
def pipe(_pipe_template):
    """A fresh deep copy per test: generate() sets scheduler timesteps, fills the prompt-embedding
    cache and swaps attention processors, and some tests patch weights, so nothing a test does
    (or leaves half-done when it fails) may reach the next one. Same weights bit for bit."""
    import copy

    return copy.deepcopy(_pipe_template)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def run(pipe, mode, prompts, cross=0.5, self_=0.5, **kw):
    ctrl = attention.make_controller(mode, prompts, pipe.tokenizer, STEPS, cross, self_, max_len=MAX_LEN, keep_steps=True,
                               self_max_tokens=64, **kw)
    x_T = initial_latents(pipe, 8888, "test")
    images, store, latents = generate(pipe, prompts, x_T, STEPS, 5.0, ctrl, return_latents=True)
    return images, store, latents


# --- token mappings ---------------------------------------------------------------------------


def test_alignment_maps_shared_words_and_leaves_new_ones_unmapped(tok):
    src, tgt = "a photo of a house on a mountain", "a photo of a house on a mountain at winter"
    mapper, alphas = attention.refinement_mapper(src, tgt, tok, MAX_LEN)
    n_src = len(src.split())
    # BOS + 8 shared one-token words map to themselves; "at", "winter" are new; EOS/padding follow the source's
    assert mapper[: n_src + 1].tolist() == list(range(n_src + 1))
    assert alphas[: n_src + 1].tolist() == [1.0] * (n_src + 1)
    new = attention.token_indices(tgt, ["at", "winter"], tok)
    assert new == [n_src + 1, n_src + 2]
    assert alphas[new].tolist() == [0.0, 0.0]
    assert mapper[n_src + 3].item() == n_src + 1  # target EOS <- source EOS
    assert mapper[n_src + 4 :].tolist() == list(range(n_src + 4, MAX_LEN))  # padding <- the same positions
    # a word inserted in the middle shifts the later words' mapping
    mapper2, alphas2 = attention.refinement_mapper("a house on a mountain", "a red house on a mountain", tok, MAX_LEN)
    assert alphas2[2].item() == 0.0 and mapper2[3].item() == 2 and mapper2[6].item() == 5


def test_token_indices_take_a_word_by_its_place(tok):
    """An int names one word by its place (the reference's get_word_inds), where a word given as text
    names every occurrence: "red" is both objects' colour, place 5 the second's only."""
    text = "a red square and a red house"
    spans = [list(range(*s)) for s in attention.word_token_spans(text, tok)]  # this tokenizer may split a word
    assert attention.token_indices(text, "red", tok) == spans[1] + spans[5]
    assert attention.token_indices(text, [5, 6], tok) == spans[5] + spans[6]
    assert attention.token_indices(text, [5, "square"], tok) == spans[2] + spans[5]
    with pytest.raises(ValueError, match="word place 7 is outside"):
        attention.token_indices(text, 7, tok)
    blend = attention.LocalBlend([text, text.replace("a red house", "a blue house")], [5, 6], tok, MAX_LEN)
    target_spans = [list(range(*s)) for s in attention.word_token_spans(text.replace("a red house", "a blue house"), tok)]
    assert blend.alpha[0].nonzero()[:, 0].tolist() == spans[5] + spans[6]
    assert blend.alpha[1].nonzero()[:, 0].tolist() == target_spans[5] + target_spans[6]


def test_global_alignment_matches_repeated_elements_in_order():
    assert attention.global_alignment(list("abcab"), list("abxcab")) == [0, 1, -1, 2, 3, 4]
    assert attention.global_alignment(list("abc"), list("abc")) == [0, 1, 2]
    assert attention.global_alignment(list("ab"), list("ba")) .count(-1) == 1


# The reference's rules, restated independently (google/prompt-to-prompt, seq_aligner.py and ptp_utils.py).


def reference_alignment(x, y) -> list[int]:
    """seq_aligner.global_align + get_aligned_sequences: y's aligned index in x, or -1.

    Scores: gap 0, match 1, mismatch -1. Each cell records the move that explains its score,
    preferring a gap in x (left), then a gap in y (up), then the diagonal; the walk back follows
    the records and pairs on every diagonal move.
    """
    n, m = len(x), len(y)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    move = [["left"] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        move[i][0] = "up"
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            left, up = score[i][j - 1], score[i - 1][j]
            diag = score[i - 1][j - 1] + (1 if x[i - 1] == y[j - 1] else -1)
            score[i][j] = max(left, up, diag)
            move[i][j] = "left" if score[i][j] == left else "up" if score[i][j] == up else "diag"
    out, i, j = [], n, m
    while i > 0 or j > 0:
        if move[i][j] == "diag":
            i, j = i - 1, j - 1
            out.append(i)
        elif move[i][j] == "left":
            j -= 1
            out.append(-1)
        else:
            i -= 1
    return out[::-1]


def reference_refinement(x_ids, y_ids, max_len):
    """seq_aligner.get_mapper on encoded prompts (special tokens included): (mapper, alphas)."""
    align = reference_alignment(x_ids, y_ids)
    alphas = torch.ones(max_len)
    alphas[: len(align)] = torch.tensor([float(i != -1) for i in align])
    mapper = torch.zeros(max_len, dtype=torch.long)
    mapper[: len(align)] = torch.tensor(align)
    mapper[len(y_ids):] = len(y_ids) + torch.arange(max_len - len(y_ids))
    return mapper, alphas


def test_global_alignment_breaks_ties_to_the_leftmost_occurrence_as_the_reference():
    assert attention.global_alignment(["x"], ["x", "x"]) == [0, -1] == reference_alignment(["x"], ["x", "x"])
    assert attention.global_alignment(["x", "x"], ["x"]) == [0] == reference_alignment(["x", "x"], ["x"])
    assert attention.global_alignment(list("ab"), list("abab")) == [0, 1, -1, -1]
    import random

    rng = random.Random(0)
    for _ in range(400):
        a = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        b = [rng.choice("abc") for _ in range(rng.randint(0, 7))]
        assert attention.global_alignment(a, b) == reference_alignment(a, b), (a, b)


def test_refine_maps_padding_to_the_same_positions_as_the_reference(tok):
    pairs = [
        ("a house on a mountain", "a red house on a mountain"),  # inserted: 1 token
        ("a photo of a house on a mountain", "a photo of a house on a mountain at winter"),
        ("a painting of a cat", "a painting of a squirrel cat"),  # inserted: 5 tokens
        ("a red circle on a white background", "a circle on a background"),  # removed
        ("a cat", "a cat on a cat"),  # repeated words: ties
    ]
    for src, tgt in pairs:
        mapper, alphas = attention.refinement_mapper(src, tgt, tok, MAX_LEN)
        ref_mapper, ref_alphas = reference_refinement(tok(src).input_ids, tok(tgt).input_ids, MAX_LEN)
        assert alphas.tolist() == ref_alphas.tolist(), (src, tgt)
        used = alphas.bool()  # the reference maps new tokens to -1; their alpha 0 leaves them unused
        assert mapper[used].tolist() == ref_mapper[used].tolist(), (src, tgt)
    # the padding after "a red house on a mountain" <EOS> takes the source's attention at the same positions
    mapper, _ = attention.refinement_mapper(*pairs[0], tok, MAX_LEN)
    end = len(tok(pairs[0][1]).input_ids)
    assert mapper[end:].tolist() == list(range(end, MAX_LEN))


def test_replace_windows_round_as_the_reference(tok):
    """Cross window: the first int(f * (S + 1)) of S + 1 rows (ptp_utils.update_alpha_time_word);
    self window: the first int(f * S) steps (AttentionControlEdit.num_self_replace)."""
    S = 7
    prompts = ["a red circle on a white background", "a blue circle on a white background"]
    ids = tok(prompts[1]).input_ids
    blue = ids.index(tok.convert_tokens_to_ids("blue</w>"))
    for steps in (0.8, 0.5, 1.0, 0.0, (0.2, 0.6), {"default": 0.8, "blue": 0.3}, {"default_": (0.1, 0.9), "blue": (0.5, 1.0)}):
        expected = torch.zeros(S + 1, 1, MAX_LEN)
        bounds = dict(steps) if isinstance(steps, dict) else {"default": steps}
        for word, b in bounds.items():
            lo, hi = (0.0, b) if isinstance(b, float) else b
            cols = slice(None) if word in ("default", "default_") else [blue]
            expected[:, :, cols] = 0
            expected[int(lo * (S + 1)) : int(hi * (S + 1)), :, cols] = 1
        assert torch.equal(attention.cross_replace_alpha(prompts, S, steps, tok, MAX_LEN), expected), steps
    assert int(attention.cross_replace_alpha(prompts, S, 0.8, tok, MAX_LEN)[:, 0, 0].sum()) == 6  # int(0.8 * 7) would be 5
    for frac in (1.0, 0.8, 0.5, (0.25, 0.75)):
        lo, hi = (0.0, frac) if isinstance(frac, float) else frac
        ctrl = attention.make_controller("replace", prompts, tok, S, 0.8, frac, max_len=MAX_LEN)
        assert ctrl.self_window == (int(lo * S), int(hi * S)), frac


def test_injection_windows_in_a_pndm_run_follow_the_reference(pipe):
    """PNDM takes S + 1 steps: the cross window of 0.8 covers int(0.8 * 8) = 6 of them, the self
    window of 1.0 int(1.0 * 7) = 7 (the extra last step is not replaced), as in the reference."""
    import copy

    from diffusers import PNDMScheduler

    S = 7
    pndm = copy.copy(pipe)
    pndm.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
    prompts = ["a red circle on a white background", "a blue circle on a white background"]
    ctrl = attention.make_controller("replace", prompts, pipe.tokenizer, S, 0.8, 1.0, max_len=MAX_LEN, self_max_tokens=64)
    _, store = generate(pndm, prompts, initial_latents(pipe, 5, "pndm"), S, 5.0, ctrl)
    assert store.cur_step == S + 1
    big = lambda n: n.startswith("down_blocks.0") or n.startswith("up_blocks.1")  # noqa: E731 - 16x16 maps, not stored
    for n, proc in store.processors.items():
        if big(n) and "attn2" in n:
            assert proc.explicit_calls == int(0.8 * (S + 1)), n
        if not big(n) and "attn1" in n:
            assert (proc.explicit_calls, proc.source_calls) == (0, int(1.0 * S)), n


def test_replacement_mapper_spreads_multi_token_words(tok):
    src, tgt = "a painting of a squirrel eating a burger", "a painting of a lion eating a burger"
    M = attention.replacement_mapper(src, tgt, tok, MAX_LEN)
    (s0, s1), (t0, t1) = attention.word_token_spans(src, tok)[4], attention.word_token_spans(tgt, tok)[4]
    assert s1 - s0 == 5 and t1 - t0 == 2
    assert torch.equal(M[s0:s1, t0:t1], torch.full((5, 2), 0.5))  # lion's 2 tokens share squirrel's 5
    end_s = attention.core_token_range(src, tok)[1]
    assert torch.equal(M.sum(1)[: end_s + 1], torch.ones(end_s + 1))  # every source token's attention passes on
    assert M[s1, t1].item() == 1 and M[:s0].equal(torch.eye(MAX_LEN)[:s0])  # shared words map one to one
    base = torch.rand(3, 7, MAX_LEN).softmax(-1)
    assert torch.allclose((base @ M)[..., t0:t1].sum(-1), base[..., s0:s1].sum(-1))  # the word's total is kept


def test_word_swap_with_different_word_counts_is_an_error(tok):
    with pytest.raises(ValueError, match="same number of words"):
        attention.replacement_mapper("a red circle", "a big red circle", tok, MAX_LEN)
    errors = prompts.validate_edits([{"name": "e", "source": "a red circle", "target": "a big red circle", "mode": "replace"}])
    assert errors == ["p2p.edits[0] (e): mode replace needs prompts with the same number of words; source has 3, target 4"]


def test_validate_edits_names_the_key():
    ok = {"name": "ok", "source": "a cat", "target": "a dog", "mode": "replace", "blend_words": ["cat", "dog"]}
    assert prompts.validate_edits([ok]) == []
    bad = [
        ok,
        dict(ok),  # duplicate name
        {"name": "b", "source": " ", "target": "a dog", "mode": "refine"},
        {"name": "c", "source": "a cat", "target": "a cat", "mode": "reweight", "reweight": {"words": ["dog"], "scale": 2}},
        {"name": "d", "source": "a cat", "target": "a dog", "mode": "replace", "blend_words": ["bird"]},
        {"name": "e", "source": "a cat", "target": "a cat", "mode": "reweight"},
        {"name": "g", "source": "a cat", "target": "a dog", "mode": "reweight", "base_mode": "none",
         "reweight": {"words": ["dog"], "scale": 2}},
    ]
    errors = prompts.validate_edits(bad, tokenizer_max_words=5)
    text = "\n".join(errors)
    assert "p2p.edits[1] (ok): duplicate name" in text
    assert "p2p.edits[2] (b): source prompt is empty" in text
    assert "p2p.edits[3] (c): reweight word 'dog' is not in the target prompt" in text
    assert "p2p.edits[4] (d): blend word 'bird' is in neither prompt" in text
    assert "p2p.edits[5] (e): mode reweight needs a reweight block" in text
    assert "p2p.edits[6] (g): base_mode none reweights the source prompt itself" in text
    assert len(errors) == 6
    long = {"name": "f", "source": "a b c d e f", "target": "a b c d e f", "mode": "refine"}
    assert "6 words" in prompts.validate_edits([long], tokenizer_max_words=5)[0]


def test_shipped_configs_have_valid_edits():
    root = Path(__file__).resolve().parents[1]
    checked = 0
    for path in [root / "config.yaml", *sorted((root / "presets").glob("*.yaml"))]:
        edits = ((yaml.safe_load(path.read_text()) or {}).get("p2p") or {}).get("edits")
        if edits:
            assert prompts.validate_edits(edits) == [], path
            checked += 1
    assert checked >= 1


# --- controllers in a sampling run ------------------------------------------------------------


def test_same_prompt_full_replacement_gives_the_source_image(pipe):
    prompts = ["a red circle on a white background"] * 2
    images, _, _ = run(pipe, "replace", prompts, cross=1.0, self_=1.0)
    assert torch.equal(images[0], images[1])
    solo, _ = generate(pipe, prompts[:1], initial_latents(pipe, 8888, "test"), STEPS, 5.0)
    # the source branch is plain sampling of the source prompt (up to the rounding of another batch size)
    torch.testing.assert_close(images[0], solo[0], rtol=0, atol=1e-4)


def test_a_controller_batch_gives_each_edit_what_it_gives_alone(pipe):
    """Several edits in one batch (each its own x_T and controller) give each edit its own
    images and maps, up to the rounding of another batch size; a wrong prompt count is an error."""
    edits = [("replace", ["a red circle on a white background", "a blue circle on a white background"], None),
             ("refine", ["a photo of a house", "a photo of a house at winter"], None),
             ("reweight", ["a red circle on a white background"] * 2, {"words": ["red"], "scale": 3.0})]

    def ctrl(mode, prompts, rw):
        kw = {"base_mode": "none"} if mode == "reweight" else {}
        return attention.make_controller(mode, prompts, pipe.tokenizer, STEPS, 0.6, 0.4, max_len=MAX_LEN, reweight=rw,
                                         self_max_tokens=64, keep_steps=True, **kw)

    x_Ts = [initial_latents(pipe, 8888, f"batch/{i}") for i in range(len(edits))]
    alone = [generate(pipe, prompts, x, STEPS, 5.0, ctrl(mode, prompts, rw)) for (mode, prompts, rw), x in zip(edits, x_Ts)]
    ctrls = [ctrl(mode, prompts, rw) for mode, prompts, rw in edits]
    batch = attention.ControllerBatch(ctrls)
    images, _ = generate(pipe, [p for _, prompts, _ in edits for p in prompts], torch.cat(x_Ts).repeat_interleave(2, dim=0),
                         STEPS, 5.0, batch)
    for i, (imgs, store) in enumerate(alone):
        torch.testing.assert_close(images[2 * i: 2 * i + 2], imgs, rtol=0, atol=1e-4)
        torch.testing.assert_close(ctrls[i].average(), store.average(), rtol=0, atol=1e-5)
        assert len(ctrls[i].steps) == STEPS
    assert (images[3] - images[2]).abs().max() > 1e-2  # the refinement did change its target
    with pytest.raises(ValueError, match="4 prompts in all, got 2"):
        generate(pipe, edits[0][1], x_Ts[0], STEPS, 5.0, attention.ControllerBatch(ctrls[:2]))
    with pytest.raises(ValueError, match="x_T must have shape"):
        generate(pipe, edits[0][1], torch.cat(x_Ts), STEPS, 5.0)


def test_replace_injects_source_attention_before_the_cutoff_only(pipe):
    src, tgt = "a painting of a squirrel eating a burger", "a painting of a lion eating a burger"
    _, store, _ = run(pipe, "replace", [src, tgt], cross=0.5, self_=0.0)
    M = attention.replacement_mapper(src, tgt, pipe.tokenizer, MAX_LEN)
    cut = int(0.5 * STEPS)
    assert len(store.steps) == STEPS
    for i, maps in enumerate(store.steps):  # (2, Q, L)
        expected = maps[0] @ M
        if i < cut:
            torch.testing.assert_close(maps[1], expected, rtol=0, atol=1e-6)
        else:
            assert (maps[1] - expected).abs().max() > 1e-3


def test_refine_injects_aligned_source_attention_before_the_cutoff_only(pipe):
    src, tgt = "a photo of a house on a mountain", "a photo of a house on a mountain at winter"
    _, store, _ = run(pipe, "refine", [src, tgt], cross=0.5, self_=0.0)
    mapper, alphas = attention.refinement_mapper(src, tgt, pipe.tokenizer, MAX_LEN)
    shared = alphas.bool()
    for i, maps in enumerate(store.steps):
        aligned = maps[0][:, mapper]
        if i < STEPS // 2:
            torch.testing.assert_close(maps[1][:, shared], aligned[:, shared], rtol=0, atol=1e-6)
            assert (maps[1][:, ~shared] - aligned[:, ~shared]).abs().max() > 1e-4  # new words keep their own
        else:
            assert (maps[1][:, shared] - aligned[:, shared]).abs().max() > 1e-3


def test_reweight_scales_exactly_the_chosen_token(pipe):
    prompt = "a red circle on a white background"
    _, store, _ = run(pipe, "reweight", [prompt, prompt], cross=0.5, self_=0.0, reweight={"words": ["red"], "scale": 3.0})
    (r0, r1), = [attention.word_token_spans(prompt, pipe.tokenizer)[1]]
    scale = torch.ones(MAX_LEN)
    scale[r0:r1] = 3.0
    for maps in store.steps[: STEPS // 2]:
        torch.testing.assert_close(maps[1], maps[0] * scale, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(store.steps[0][1], store.steps[0][0])


def test_local_blend_keeps_latents_outside_the_mask_equal_to_the_source(pipe):
    import copy

    sharp = copy.copy(pipe)
    sharp.unet = copy.deepcopy(pipe.unet)
    for name, module in sharp.unet.named_modules():
        if name.endswith("attn2"):  # peaked cross-attention, so that the word maps are not uniform
            module.to_q.weight.data *= 30
    src, tgt = "a red circle on a white background", "a red square on a white background"
    _, store, latents = run(sharp, "replace", [src, tgt], cross=0.5, self_=0.2, blend_words=["circle", "square"],
                            mask_threshold=0.8)
    mask = store.local_blend.last_mask  # (2, 1, h, w) bool, from the last step
    outside = ~mask[1, 0]
    assert 0 < outside.sum() < outside.numel()  # a real mask: some pixels in, some out
    assert torch.equal(latents[1][:, outside], latents[0][:, outside])
    assert not torch.equal(latents[1][:, ~outside], latents[0][:, ~outside])


def reference_blend_mask(maps_so_far, alpha_words, map_hw, latent_hw, threshold):
    """The reference's LocalBlend mask (prompt-to-prompt_stable.ipynb): the maps summed over the steps
    so far, weighted by the blend words, max-pooled 3x3, resized (nearest), normalised by the
    maximum, thresholded, and the source's mask added to each prompt's."""
    import torch.nn.functional as F

    m = (maps_so_far * alpha_words[:, None, :]).sum(-1).reshape(-1, 1, *map_hw)
    m = F.interpolate(F.max_pool2d(m, (3, 3), (1, 1), padding=(1, 1)), size=latent_hw)
    m = m / m.max(2, keepdim=True)[0].max(3, keepdim=True)[0]
    m = m > threshold
    return m[:1] | m


def test_local_blend_uses_the_maps_summed_so_far_from_the_first_step_as_the_reference(pipe):
    src, tgt = "a red circle on a white background", "a red square on a white background"
    ctrl = attention.make_controller("replace", [src, tgt], pipe.tokenizer, STEPS, 0.5, 0.2, blend_words=["circle", "square"],
                               mask_threshold=0.8, max_len=MAX_LEN, keep_steps=True, self_max_tokens=64)
    lb = ctrl.local_blend
    masks = []
    compute = lb.mask
    lb.mask = lambda *a: masks.append(compute(*a)) or masks[-1]
    _, store, latents = generate(sharpened(pipe), [src, tgt], initial_latents(pipe, 8888, "test"), STEPS, 5.0, ctrl,
                                 return_latents=True)
    alpha = torch.zeros(2, MAX_LEN)
    for i, (prompt, word) in enumerate(((src, "circle"), (tgt, "square"))):
        ids = pipe.tokenizer(prompt).input_ids
        alpha[i, ids.index(pipe.tokenizer.convert_tokens_to_ids(word + "</w>"))] = 1
    assert len(masks) == STEPS  # blended after every step, the first included
    cumulative_differs = False
    for k, mask in enumerate(masks):
        so_far = sum(store.steps[: k + 1])
        expected = reference_blend_mask(so_far, alpha, store.store_hw, latents.shape[-2:], 0.8)
        assert torch.equal(mask.cpu(), expected), k
        this_step = reference_blend_mask(store.steps[k], alpha, store.store_hw, latents.shape[-2:], 0.8)
        cumulative_differs |= not torch.equal(expected, this_step)
    assert cumulative_differs  # the test tells the running sum from the current step's maps
    outside = ~masks[-1][1, 0].cpu()
    assert 0 < outside.sum() < outside.numel()
    assert torch.equal(latents[1][:, outside], latents[0][:, outside])


def test_controller_moves_its_tensors_once_and_decides_steps_on_the_host(pipe, monkeypatch):
    """Issue 20: no .to() of the edit's tensors and no .any() (a device sync) per attention call."""
    prompts = ["a red circle on a white background", "a red square on a white background"]
    ctrl = attention.make_controller("reweight", prompts, pipe.tokenizer, STEPS, 0.5, 0.5, reweight={"words": ["red"], "scale": 2.0},
                               base_mode="replace", blend_words=["circle", "square"], max_len=MAX_LEN)
    calls = {"any": 0, "to": 0}
    real_any, real_to = torch.Tensor.any, torch.Tensor.to

    def counting(name, real):
        def f(self, *a, **k):
            calls[name] += 1
            return real(self, *a, **k)
        return f

    ctrl.begin(pipe.unet, (16, 16), 2)
    monkeypatch.setattr(torch.Tensor, "any", counting("any", real_any))
    monkeypatch.setattr(torch.Tensor, "to", counting("to", real_to))
    assert ctrl.cross_on == [True] * 3 + [False] * 4 and ctrl.self_on == [True] * 3 + [False] * 4
    assert ctrl._equalizer.device == ctrl.prev._mapper.device == ctrl._cross_alpha.device == pipe.unet.device
    probs = torch.rand(4, 2, 64, MAX_LEN).softmax(-1)
    for step in range(STEPS):
        ctrl.cur_step = step
        for _ in range(3):
            ctrl(probs, True)
            ctrl.needs_probs(True, 64) and ctrl.needs_probs(False, 64)
            rows = ctrl.self_source_rows(64)
            assert (rows is not None) == ctrl.self_on[step] and (rows is None or rows.device == pipe.unet.device)
    assert calls == {"any": 0, "to": 0}


def test_processors_route_only_needed_layers_to_explicit_attention(pipe):
    prompts = ["a red circle on a white background", "a blue circle on a white background"]
    _, store, _ = run(pipe, "replace", prompts, cross=0.5, self_=0.5)
    procs = store.processors
    cross = {n: p for n, p in procs.items() if "attn2" in n}
    self_ = {n: p for n, p in procs.items() if "attn1" in n}
    big = lambda n: n.startswith("down_blocks.0") or n.startswith("up_blocks.1")  # noqa: E731 - 16x16 maps
    # self-attention: never explicit; the source's queries only at the small (8x8 <= self_max_tokens)
    # maps, and only in its window
    for n, p in self_.items():
        assert (p.explicit_calls, p.source_calls, p.sdpa_calls) == ((0, 0, STEPS) if big(n) else (0, STEPS // 2, STEPS - STEPS // 2)), n
    # cross-attention: explicit in the cross window everywhere; afterwards only at the stored 8x8 maps
    for n, p in cross.items():
        assert (p.explicit_calls, p.source_calls, p.sdpa_calls) == ((STEPS // 2, 0, STEPS - STEPS // 2) if big(n) else (STEPS, 0, 0)), n
    # plain sampling with an attention store: explicit only for cross-attention at the stored size
    _, store = generate(pipe, prompts[:1], initial_latents(pipe, 1, "x"), 2, 5.0)
    for n, p in store.processors.items():
        assert p.explicit_calls == (0 if big(n) or "attn1" in n else 2), n
    assert set(pipe.unet.attn_processors) == set(procs)  # the default processors are back
    assert all(type(v).__name__ == "AttnProcessor2_0" for v in pipe.unet.attn_processors.values())


def test_explicit_and_default_attention_agree(pipe):
    """With no edit, routing every layer to explicit probabilities changes the image by rounding only."""
    prompts = ["a cat", "a dog"]
    ctrl = attention.make_controller("refine", prompts, pipe.tokenizer, STEPS, 0.0, 0.0, max_len=MAX_LEN)
    x_T = initial_latents(pipe, 3, "agree")
    edited, _ = generate(pipe, prompts, x_T, STEPS, 5.0, ctrl)
    plain, _ = generate(pipe, prompts, x_T, STEPS, 5.0, plain=True)
    torch.testing.assert_close(edited, plain, rtol=0, atol=1e-4)


class _ExplicitReplace(attention.Replace):
    """Explicit probabilities in every layer: self-attention injected by replacing the probabilities."""

    def needs_probs(self, is_cross, n_query):
        return True


def test_self_injection_on_the_source_queries_equals_replacing_the_probabilities(pipe):
    """The fused route (each edited branch attends with the source's queries and keys) gives what
    replacing its self-attention probabilities by the source's gives, also in a batch where one edit
    injects self-attention and the other does not; and the injection does change the target."""
    prompts = ["a red circle on a white background", "a red square on a white background"]
    x_T = initial_latents(pipe, 8888, "fused")
    kw = dict(max_len=MAX_LEN, self_max_tokens=64)
    fused = attention.make_controller("replace", prompts, pipe.tokenizer, STEPS, 0.5, 1.0, **kw)
    img, store, lat = generate(pipe, prompts, x_T, STEPS, 5.0, fused, return_latents=True)
    assert sum(p.source_calls for p in store.processors.values()) > 0
    assert not any("attn1" in n and p.explicit_calls for n, p in store.processors.items())
    ref = _ExplicitReplace(prompts, pipe.tokenizer, STEPS, 0.5, 1.0, **kw)
    img_ref, _, lat_ref = generate(pipe, prompts, x_T, STEPS, 5.0, ref, return_latents=True)
    torch.testing.assert_close(lat, lat_ref, rtol=0, atol=1e-4)
    no_self = attention.make_controller("replace", prompts, pipe.tokenizer, STEPS, 0.5, 0.0, **kw)
    _, _, lat_none = generate(pipe, prompts, x_T, STEPS, 5.0, no_self, return_latents=True)
    assert (lat_none[1] - lat[1]).abs().max() > 1e-2  # self injection moved the target
    torch.testing.assert_close(lat_none[0], lat[0], rtol=0, atol=1e-5)  # and left the source alone
    # a batch: edit 0 injects self-attention, edit 1 does not
    x_T2 = initial_latents(pipe, 7, "fused/2")
    c0 = attention.make_controller("replace", prompts, pipe.tokenizer, STEPS, 0.5, 1.0, **kw)
    c1 = attention.make_controller("replace", prompts, pipe.tokenizer, STEPS, 0.5, 0.0, **kw)
    _, _, lat_b = generate(pipe, prompts * 2, torch.cat([x_T, x_T2]).repeat_interleave(2, dim=0), STEPS, 5.0,
                           attention.ControllerBatch([c0, c1]), return_latents=True)
    _, _, lat1 = generate(pipe, prompts, x_T2, STEPS, 5.0,
                          _ExplicitReplace(prompts, pipe.tokenizer, STEPS, 0.5, 0.0, **kw), return_latents=True)
    torch.testing.assert_close(lat_b[:2], lat_ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(lat_b[2:], lat1, rtol=0, atol=1e-4)


def test_prompts_are_encoded_once_per_model_and_equal_direct_encoding(pipe):
    import copy

    fresh = copy.copy(pipe)
    fresh.embeddings = {}
    calls = []
    hook = fresh.text_encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        states = encode_prompts(fresh, ["a cat", "", "a cat", ""])
        again = encode_prompts(fresh, ["", "a dog"])
    finally:
        hook.remove()
    assert calls == [2, 1]  # "a cat" and "" once, then only "a dog"
    with torch.no_grad():
        direct = fresh.text_encoder(tokenize(fresh.tokenizer, ["a cat", "", "a dog"], MAX_LEN))[0]
    torch.testing.assert_close(states, direct[[0, 1, 0, 1]], rtol=0, atol=1e-6)
    torch.testing.assert_close(again, direct[[1, 2]], rtol=0, atol=1e-6)


# --- the edit stage, model loading, report -----------------------------------------------------


def sharpened(pipe: Text2Image) -> Text2Image:
    """A copy whose cross-attention is peaked, so that word maps (and masks) are not uniform."""
    import copy

    sharp = copy.copy(pipe)
    sharp.unet = copy.deepcopy(pipe.unet)
    for name, module in sharp.unet.named_modules():
        if name.endswith("attn2"):
            module.to_q.weight.data *= 30
    sharp.scheduler = copy.deepcopy(pipe.scheduler)
    return sharp


EDIT = {"name": "shape", "source": "a red circle on a white background", "target": "a red square on a white background",
        "mode": "replace", "cross_replace_steps": 0.5, "self_replace_steps": 0.3, "blend_words": ["circle", "square"], "seed": 8888}


def test_p2p_self_max_tokens_reaches_the_showcased_edits_controllers(pipe, tmp_path, monkeypatch):
    """p2p.self_max_tokens sets where the showcased edits (p2p_edit) inject self-attention; null
    reaches the controller as None, the attention module's default."""
    seen = []

    def spy(edit, tokenizer, num_steps, max_len, mask_threshold, **kw):
        seen.append(kw)
        raise RuntimeError("stop after building the controller")

    monkeypatch.setattr(p2p_stage, "edit_controller", spy)
    monkeypatch.setattr(p2p_stage, "load_model", lambda cfg, device, model_dir: pipe)
    outputs = {k: str(tmp_path / k) for k in p2p_stage.ARTIFACTS}
    cfg = {"num_inference_steps": STEPS, "guidance_scale": 2.0, "mask_threshold": 0.3}
    for value in (256, None):
        with pytest.raises(RuntimeError, match="stop after"):
            p2p_stage.p2p_edit(dict(cfg, self_max_tokens=value), EDIT, outputs, seed=0)
    assert seen == [{"self_max_tokens": 256}, {"self_max_tokens": None}]


@pytest.mark.slow
def test_run_edit_writes_artifacts_and_local_blend_leaves_the_outside_alone(pipe, tmp_path, monkeypatch):
    import numpy as np
    import pandas as pd
    from PIL import Image

    figure_rows = []
    draw = p2p_stage.attention_figure
    monkeypatch.setattr(p2p_stage, "attention_figure", lambda path, rows: (figure_rows.extend(rows), draw(path, rows))[1])
    outputs = {k: str(tmp_path / "shape" / (k + (".csv" if k == "metrics" else ".png"))) for k in p2p_stage.ARTIFACTS}
    row = p2p_stage.run_edit(sharpened(pipe), EDIT, outputs, num_steps=STEPS, guidance_scale=5.0, mask_threshold=0.8)
    for k in ("source", "edit", "baseline"):
        assert Image.open(outputs[k]).size == (16, 16)
    # the attention maps are drawn over each row's own image: source, edited, no control
    assert [r[0] for r in figure_rows] == ["source", "edited", "no control"]
    for (_, _, _, image), k in zip(figure_rows, ("source", "edit", "baseline")):
        np.testing.assert_array_equal(image, np.asarray(Image.open(outputs[k])))
    assert Image.open(outputs["side_by_side"]).size[0] > Image.open(outputs["side_by_side"]).size[1]
    df = pd.read_csv(outputs["metrics"])
    assert list(df.columns) == p2p_stage.METRIC_COLUMNS and df.iloc[0]["mask"] == "local_blend"
    assert 0 < row["mask_fraction"] < 1
    assert row["edit_mae_outside"] == 0.0  # pixel space: outside the blend mask the edit *is* the source
    assert row["baseline_mae_outside"] > 0 and row["edit_mae"] > 0
    assert sorted(p.name for p in (tmp_path / "shape").iterdir()) == sorted(Path(v).name for v in outputs.values())

    # the report section: numbers from the CSV, prompts escaped
    p2p_stage.p2p_metrics([outputs["metrics"]], str(tmp_path / "metrics.csv"))
    config = {"p2p": {"model": {"source": "pretrained", "pretrained": "tiny"}, "scheduler": "ddim", "num_inference_steps": STEPS,
                      "guidance_scale": 5.0, "edits": [dict(EDIT, target="a <b>square</b> & more")]}}
    files = {"metrics": str(tmp_path / "metrics.csv"), "shape_figure": outputs["side_by_side"], "shape_attention": outputs["attention"]}
    ctx = p2p_section.report_context(files, config)
    assert ctx["n_closer"] == 1 and ctx["rows"][0]["|src-edit| outside"] == 0.0
    html = render_section(ctx, config)
    assert "a &lt;b&gt;square&lt;/b&gt; &amp; more" in html and "<b>square" not in html
    assert html.lstrip().startswith('<section id="p2p">') and "data:image/png;base64," in html
    assert "the first 50% of the steps" in " ".join(html.split())  # fractions from the config


def test_p2p_discussion_follows_the_whole_image_comparison(tmp_path):
    """'What surprises' states how often the edit keeps more of the source than the baseline: contrary
    numbers flip the sentence; a same-prompt reweight is left out of the comparison."""
    import pandas as pd

    edits = [{"name": "a", "mode": "replace", "source": "a red circle", "target": "a blue circle"},
             {"name": "b", "mode": "replace", "source": "a red square", "target": "a red circle"},
             {"name": "c", "mode": "reweight", "source": "a red circle", "target": "a red circle"}]
    config = {"p2p": {"model": {"source": "train", "pretrained": ""}, "scheduler": "ddim", "num_inference_steps": 5,
                      "guidance_scale": 5.0, "mask_threshold": 0.3, "edits": edits}}

    def text(edit_mae, fractions):
        rows = [{"edit": e["name"], "mode": e["mode"], "mask": "attention", "mask_fraction": f, "edit_mae": m,
                 "baseline_mae": 0.1 if e["source"] != e["target"] else 0.0, "edit_mae_outside": float("nan"),
                 "baseline_mae_outside": float("nan")} for e, m, f in zip(edits, edit_mae, fractions)]
        pd.DataFrame(rows).to_csv(tmp_path / "m.csv", index=False)
        ctx = p2p_section.report_context({"metrics": str(tmp_path / "m.csv")}, config)
        return " ".join(render_section(ctx, config).split())

    closer = text([0.05, 0.02, 0.01], [0.2, 0.5, 1.0])
    assert "in 2 of the 2 edits that change the prompt the edited image is closer" in closer
    assert "Copying the attention keeps more of the source" in closer and "covers 20% to 100%" in closer
    farther = text([0.3, 0.2, 0.01], [1.0, 1.0, 1.0])
    assert "in 0 of the 2 edits" in farther and "already keeps more of the source" in farther
    assert "covers 100% of the image, i.e. all of it" in farther


def render_section(ctx, config) -> str:
    from diffusion_report.report import render as report

    root = Path(__file__).resolve().parents[1]
    env = report.environment(root / "report" / "templates")
    return env.get_template("sections/p2p.html.j2").render(ctx=ctx, config=config)


def save_tiny(pipe: Text2Image, folder: Path) -> Path:
    pipe.unet.save_pretrained(folder / "unet")
    pipe.text_encoder.save_pretrained(folder / "text_encoder")
    pipe.tokenizer.save_pretrained(folder / "tokenizer")
    pipe.scheduler.save_pretrained(folder / "scheduler")
    if pipe.vae is not None:
        pipe.vae.save_pretrained(folder / "vae")
    return folder


def test_load_text2image_round_trip_and_errors(pipe, tmp_path):
    from diffusion_report.models.loading import ModelNotFoundError

    folder = save_tiny(pipe, tmp_path / "model")
    loaded = load_text2image(folder, config_key="p2p.model.pretrained", device="cpu", scheduler="pndm")
    assert loaded.vae is None and type(loaded.scheduler).__name__ == "PNDMScheduler"
    assert loaded.max_length == MAX_LEN
    assert loaded.tokenizer("a lion").input_ids == pipe.tokenizer("a lion").input_ids
    x_T = initial_latents(loaded, 1, "rt")
    assert torch.equal(x_T, initial_latents(pipe, 1, "rt"))
    mine, _ = generate(loaded, ["a cat"], x_T, 3, 4.0)
    import copy

    ref = copy.copy(pipe)
    ref.scheduler = loaded.scheduler.__class__.from_config(loaded.scheduler.config)
    ref.embeddings = {}  # encode "a cat" alone, as the loaded model does (earlier tests cached it from a batch of 2)
    theirs, _ = generate(ref, ["a cat"], x_T, 3, 4.0)
    # two model instances (one loaded from disk): equal weights, but not bit-equal float32 results on
    # every CPU (kernel choice, memory alignment); 3 guided steps amplify rounding to ~1e-4 at most,
    # while a wrong weight, scheduler or tokenizer moves pixels by more than 0.1
    torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-3)
    with pytest.raises(ModelNotFoundError, match="p2p.model.pretrained"):
        load_text2image(tmp_path / "nothing-here", config_key="p2p.model.pretrained", device="cpu")
    # a folder missing one part: the error names the part and the key, and says the folder exists
    import shutil

    for part, what in (("tokenizer", "the tokenizer"), ("scheduler", "the scheduler config")):
        broken = tmp_path / f"no-{part}"
        shutil.copytree(folder, broken)
        shutil.rmtree(broken / part)
        with pytest.raises(ModelNotFoundError) as err:
            load_text2image(broken, config_key="p2p.model.pretrained", device="cpu")
        msg = str(err.value)
        assert msg.startswith(f"p2p.model.pretrained: cannot load {what}: the local folder"), msg
        assert f"(subfolder '{part}') exists" in msg, msg


def test_latent_model_decodes_through_the_vae(tmp_path):
    latent = tiny_pipe(pixel=False)
    folder = save_tiny(latent, tmp_path / "sd")
    loaded = load_text2image(folder, config_key="k", device="cpu")
    assert loaded.vae is not None and loaded.scheduler.config.clip_sample is False
    images, store = generate(loaded, ["a cat", "a dog"], initial_latents(loaded, 0, "v"), 2, 3.0,
                             attention.make_controller("replace", ["a cat", "a dog"], loaded.tokenizer, 2, 1.0, 1.0))
    assert images.shape == (2, 3, 16, 16) and images.abs().max() <= 1  # one-level VAE keeps the size
    assert store.average().shape == (2, 8, 8, MAX_LEN)


@pytest.mark.slow
def test_rules_run_edits_from_config_and_rerun_gives_the_same_bytes(pipe, tmp_path):
    """Rules p2p_edit and p2p_metrics on a tiny model folder named by p2p.model.pretrained."""
    from conftest import copy_workflow, run_snakemake, write_config

    wf = copy_workflow(tmp_path / "wf")
    snakefile = wf / "Snakefile"
    text = snakefile.read_text()
    if 'include: "rules/p2p.smk"' not in text:  # until the lead's Snakefile includes the stage
        snakefile.write_text(text.replace('include: "rules/common.smk"\n', 'include: "rules/common.smk"\ninclude: "rules/p2p.smk"\n'))
    model = save_tiny(pipe, tmp_path / "tiny-model")
    cfg = write_config(tmp_path / "p2p.yaml", {"device": "cpu", "p2p": {
        "enabled": True, "model": {"source": "pretrained", "pretrained": str(model)}, "scheduler": "pndm",
        "num_inference_steps": 3, "guidance_scale": 4.0, "fp16": False, "mask_threshold": 0.3,
        "edits": [
            {"name": "swap", "source": "a painting of a squirrel eating a burger", "target": "a painting of a lion eating a burger",
             "mode": "replace", "cross_replace_steps": {"default": 0.8, "lion": 0.4}, "self_replace_steps": 0.4, "seed": 1},
            {"name": "winter", "source": "a photo of a house on a mountain", "target": "a photo of a house on a mountain at winter",
             "mode": "refine", "cross_replace_steps": 0.8, "self_replace_steps": 0.4, "seed": 1},
        ],
        # a photo inverted through the model's VAE (rule p2p_real_edit on a pretrained model)
        "real_edits": [{"name": "photo", "image": "camera", "prompt": "a photo of a cat", "guidance_scale": 3.0, "num_inversion_steps": 3,
                        "null_text": {"inner_steps": 2}, "edits": [{"name": "dog", "target": "a photo of a dog", "mode": "replace"}]}]}})
    proc = run_snakemake(wf, "results/p2p/metrics.csv", "results/p2p/real/photo/metrics.csv", "--configfile", str(cfg))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    import pandas as pd

    df = pd.read_csv(wf / "results/p2p/metrics.csv")
    assert df["edit"].tolist() == ["swap", "winter"] and (df["mask"] == "attention").all()
    real = pd.read_csv(wf / "results/p2p/real/photo/metrics.csv")
    assert real["method"].tolist() == ["ddim_inversion", "null_text_inversion", "dog"] and real["psnr"].iloc[:2].notna().all()
    assert not real["measured"].iloc[2] and "embedded model's shapes only" in real["cause"].iloc[2]
    assert (wf / "results/p2p/real/photo/edits/dog.png").stat().st_size > 0
    for name in ("swap", "winter"):
        for art in ("source.png", "edit.png", "baseline.png", "side_by_side.png", "attention.png"):
            assert (wf / "results/p2p" / name / art).stat().st_size > 0
        assert (wf / "logs/p2p_edit" / f"{name}.log").exists() and (wf / "benchmarks/p2p_edit" / f"{name}.tsv").exists()
    # another process (this one, at its own torch thread count) computes the same edit from the same
    # config: equal up to float32 rounding, not byte for byte (the rule's job runs at `threads: 2`,
    # this process at however many cores the machine has; reductions split differently)
    p2p_cfg = yaml.safe_load(cfg.read_text())["p2p"]
    again = tmp_path / "again"
    outputs = {k: str(again / (k + (".csv" if k == "metrics" else ".png"))) for k in p2p_stage.ARTIFACTS}
    p2p_stage.p2p_edit(p2p_cfg, p2p_cfg["edits"][0], outputs, seed=0, device="cpu")
    for k, path in outputs.items():
        produced = wf / "results/p2p/swap" / Path(path).name
        if k == "metrics":
            # numbers from 16x16 images; one flipped mask pixel moves a fraction by 1/256 = 0.004
            pd.testing.assert_frame_equal(pd.read_csv(path), pd.read_csv(produced), check_exact=False, rtol=0, atol=0.01)
        else:
            assert_png_close(path, produced, k)


def assert_png_close(a, b, label: str, max_levels: int = 2, max_fraction: float = 0.01):
    """Same size and mode; pixels within ``max_levels`` of 255 (rounding of values that differ in
    their last float32 bits), except at most ``max_fraction`` of them (a thresholded mask pixel)."""
    import numpy as np
    from PIL import Image

    with Image.open(a) as ia, Image.open(b) as ib:
        assert (ia.size, ia.mode) == (ib.size, ib.mode), label
        diff = np.abs(np.asarray(ia, np.int16) - np.asarray(ib, np.int16))
    assert float((diff > max_levels).mean()) <= max_fraction, (label, int(diff.max()), float((diff > max_levels).mean()))


# --- the attention figure ----------------------------------------------------------------------


def _png(path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64)


def _in_png(fig, ax, png, inset: int = 3):
    """The pixels of ``ax`` in the PNG that io.save_figure wrote (bbox_inches="tight" crops the figure
    to its tight box padded by savefig.pad_inches), less ``inset`` pixels on each side."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    pad = matplotlib.rcParams["savefig.pad_inches"]
    tight = fig.get_tightbbox(FigureCanvasAgg(fig).get_renderer()).padded(pad)  # the figure was closed
    assert png.shape[:2] == (round(tight.height * fig.dpi), round(tight.width * fig.dpi))
    ext = ax.get_window_extent()
    x0, x1 = ext.x0 - tight.x0 * fig.dpi, ext.x1 - tight.x0 * fig.dpi
    y0, y1 = tight.y1 * fig.dpi - ext.y1, tight.y1 * fig.dpi - ext.y0
    return png[round(y0) + inset : round(y1) - inset, round(x0) + inset : round(x1) - inset]


def _luminance(rgb):
    return rgb[..., :3] @ [0.299, 0.587, 0.114]


def _overlay(value, vmax, grey):
    """The colour the figure should draw: the colour map at ``value / vmax``, ATTENTION_ALPHA over the
    lightened grey of the image."""
    import matplotlib
    import numpy as np

    a = p2p_stage.ATTENTION_ALPHA
    under = 255 - p2p_stage.ATTENTION_IMAGE_CONTRAST * (255 - grey)
    return a * 255 * np.asarray(matplotlib.colormaps[p2p_stage.ATTENTION_CMAP](value / vmax)[:3]) + (1 - a) * under


def _quadrants(block):
    h, w = block.shape[0] // 2, block.shape[1] // 2
    m = 2  # the edges between blocks may be antialiased
    return [block[:h - m, :w - m], block[:h - m, w + m:], block[h + m:, :w - m], block[h + m:, w + m:]]


def test_attention_figure_shares_one_colour_scale_and_shows_it_in_a_colour_bar(tmp_path):
    """Two rows, the second's maps 4x the first's: one vmin/vmax, so a value has one colour in every
    panel (the dim map's largest value, 0.2, is drawn as the bright map's smallest); a colour bar
    from 0 to the largest value with a rising gradient; the same bytes on a rerun."""
    import numpy as np

    dim = torch.tensor([[0.05, 0.10], [0.15, 0.20]])[..., None]  # (h, w, L=1)
    image = np.full((16, 16, 3), 100, np.uint8)
    rows = [("dim", dim, [(0, "x")], image), ("bright", 4 * dim, [(0, "x")], image)]
    fig = p2p_stage.attention_figure(tmp_path / "a.png", rows)
    png = _png(tmp_path / "a.png")
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    (bar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]

    overlays = [ax.get_images()[-1] for ax in panels]
    assert [im.get_clim() for im in overlays] == [(0.0, pytest.approx(0.8))] * 2
    colours = [[q.reshape(-1, 3).mean(0) for q in _quadrants(_in_png(fig, ax, png))] for ax in panels]
    np.testing.assert_allclose(colours[0][3], colours[1][0], atol=3)  # 0.2 in both panels
    for k, v in enumerate([0.05, 0.10, 0.15, 0.20]):
        np.testing.assert_allclose(colours[0][k], _overlay(v, 0.8, 100), atol=3)
        np.testing.assert_allclose(colours[1][k], _overlay(4 * v, 0.8, 100), atol=3)
    lum = [_luminance(np.array(c)) for c in colours]
    assert lum[1].mean() > lum[0].mean() + 40  # the brighter panel's overlay is visibly stronger

    assert bar.get_xlim() == (0.0, pytest.approx(0.8))
    label = " ".join(bar.get_xlabel().split())
    assert "cross-attention" in label and "one scale for all panels" in label and "2\u00d72" in label
    strip = _luminance(_in_png(fig, bar, png, inset=2).mean(0))  # left (0) to right (vmax)
    assert (np.diff(strip[:: max(1, len(strip) // 12)]) > 0).all() and strip[-1] - strip[0] > 100

    p2p_stage.attention_figure(tmp_path / "b.png", rows)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_attention_figure_upsamples_nearest_to_the_image_and_overlays_it(tmp_path):
    """A 2x2 map on a 16x16 image: the overlay is the map repeated in 8x8 blocks at the image's size
    (no interpolation), drawn over the row's image, so the panel shows 4 uniform blocks whose colours
    are the map's colours over the image's grey."""
    import numpy as np

    m = torch.tensor([[0.1, 0.4], [0.7, 1.0]])
    maps = torch.stack([m, m.flip(0)], dim=-1)  # (2, 2, 2): two tokens
    image = np.zeros((16, 16, 3), np.uint8)
    image[..., 1] = 200  # green: grey = 0.587 * 200
    fig = p2p_stage.attention_figure(tmp_path / "a.png", [("source", maps, [(0, "x"), (1, "y")], image)])
    png = _png(tmp_path / "a.png")
    ax = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"][0]
    under, overlay = ax.get_images()
    np.testing.assert_array_equal(overlay.get_array(), np.kron(m.numpy(), np.ones((8, 8))))
    assert under.get_array().shape == (16, 16)
    grey = 0.587 * 200
    for q, v in zip(_quadrants(_in_png(fig, ax, png)), [0.1, 0.4, 0.7, 1.0]):
        assert q.std(axis=(0, 1)).max() < 1.0  # uniform
        np.testing.assert_allclose(q.reshape(-1, 3).mean(0), _overlay(v, 1.0, grey), atol=3)
    np.testing.assert_array_equal(p2p_stage.upsample_nearest(np.arange(6).reshape(2, 3), (4, 3)),
                                  [[0, 1, 2], [0, 1, 2], [3, 4, 5], [3, 4, 5]])


@pytest.mark.parametrize("target", ["a red square on a white background", "a photo of a house on a mountain at winter",
                                    "a photo of a red cat and a blue dog on a white house on a mountain at winter"])
def test_attention_figure_text_prints_at_least_7pt_in_the_report(tok, tmp_path, target):
    """The report prints a PNG at 0.75 pt per pixel, at most 482 pt wide and 19 cm high: every text of
    the figure, at its font size times that scale, is at least 7 pt (7, 10 and 18 tokens)."""
    import numpy as np
    from matplotlib.text import Text

    source = "a red circle on a white background"
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(8, 8, MAX_LEN + 8, generator=g) / 4
    image = np.full((16, 16, 3), 255, np.uint8)
    labels = [attention.token_labels(p, tok) if len(p.split()) < MAX_LEN - 1 else [(i + 1, w) for i, w in enumerate(p.split())]
              for p in (source, target, target)]
    rows = [(title, maps, lbl, image) for title, lbl in zip(("source", "edited", "no control"), labels)]
    fig = p2p_stage.attention_figure(tmp_path / "a.png", rows)
    h_px, w_px = _png(tmp_path / "a.png").shape[:2]
    shown_pt = min(482.0, 0.75 * w_px, 0.75 * w_px * (19 / 2.54 * 72) / (0.75 * h_px))  # printed width
    scale = shown_pt / (w_px / fig.dpi * 72)
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert {lbl for _, lbl in labels[1]} <= {t.get_text() for t in texts}
    smallest = min(t.get_fontsize() for t in texts) * scale
    assert smallest >= 7, (w_px, h_px, scale, smallest)


def test_local_blend_goal_is_judged_only_where_the_mask_leaves_an_outside():
    from diffusion_report.report.sections import p2p as section

    nan = float("nan")
    rows = [{"edit": "a", "mask": "local_blend", "mask_fraction": 0.4, "edit_mae_outside": 0.001},
            {"edit": "b", "mask": "local_blend", "mask_fraction": 0.5, "edit_mae_outside": 0.05},
            {"edit": "c", "mask": "local_blend", "mask_fraction": 1.0, "edit_mae_outside": nan},
            {"edit": "d", "mask": "attention", "mask_fraction": 0.3, "edit_mae_outside": 0.2}]
    b = section.blend_summary(rows)
    assert (b["n"], b["judged"], b["met"], b["full"], b["names"]) == (3, 2, 1, 1, ["a", "b"])
    assert b["worst"] == 0.05 and b["goal"] == section.BLEND_MAX_MAE == 0.02
    assert section.blend_summary(rows[3:])["n"] == 0
