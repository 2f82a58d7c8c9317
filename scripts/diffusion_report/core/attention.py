"""Prompt-to-prompt image editing with cross-attention control (Hertz et al. 2022).

The source prompt and the edited (target) prompt are sampled in one batch from the same x_T. While
they are denoised, the attention probabilities of the target branch are replaced by (a mapping of)
those of the source branch, so that the layout of the source image carries over:

* :class:`Replace`  word swap ("squirrel" -> "lion"): the same number of words; a token mapping
  matrix spreads the attention of a word split into several tokens over its replacement's tokens.
* :class:`Refine`   words added ("... at winter"): a global alignment of the two token sequences;
  new tokens keep their own attention.
* :class:`Reweight` the attention equalizer: scales chosen tokens' attention; may follow a
  replace or refine edit.
* :class:`LocalBlend` optional: a mask from chosen words' cross-attention; latents outside it
  follow the source's.

Cross-attention is injected during the first ``cross_replace_steps`` of the steps (a fraction,
or per word), self-attention during the first ``self_replace_steps``, only at small maps (at most
1/16 of the latent's pixels: 16x16 for Stable Diffusion's 64x64 latents, as in the paper; at
least 8x8 for small models). Windows are rounded as in the reference implementation
(google/prompt-to-prompt): a fraction f of S steps covers the first ``int(f * (S + 1))`` steps for
cross-attention (``ptp_utils.get_time_words_attention_alpha`` counts S + 1 rows) and the first
``int(f * S)`` for self-attention (``AttentionControlEdit.num_self_replace``).

Everything runs through diffusers' attention-processor API: :func:`install` puts one
:class:`P2PAttnProcessor` on every attention layer with ``unet.set_attn_processor``; each call
asks its controller whether this layer at this step needs explicit attention probabilities
(cross-attention edits, the attention store), or injects the source's self-attention (run by the
fused kernel on the source's queries and keys: the source's map times the branch's own values, no
(Q, Q) matrix), and otherwise runs diffusers' default processor (``F.scaled_dot_product_attention``). Only the conditional
half of the classifier-free guidance batch is controlled, as in the original implementation.

Shapes: B prompts; L tokens (the padded prompt length, 77 for CLIP); attention probabilities of one
layer are (2B, heads, Q, K) with Q = h*w pixels and K = L (cross) or Q (self).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from diffusion_report.core.prompts import (
    MODES,
    _norm_prompt,
    normalize_word,
    per_word_steps,
    prompt_words,
    word_positions,
)

log = logging.getLogger(__name__)


MIN_MAP_SIDE = 8  # small models: store maps and inject self-attention at maps of at least/up to 8x8


def text_max_length(tokenizer, text_encoder=None) -> int:
    """The padded prompt length: the tokenizer's limit, capped by the encoder's position table."""
    n = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if text_encoder is not None:
        pos = getattr(text_encoder.config, "max_position_embeddings", None)
        if pos:
            n = min(n, int(pos)) if 0 < n < 10**9 else int(pos)
    if not 0 < n < 10**9:
        raise ValueError("cannot tell the prompt length: set tokenizer.model_max_length")
    return n


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special).input_ids)


def word_token_spans(text: str, tokenizer, max_len: int | None = None) -> list[tuple[int, int]]:
    """Token span [start, end) in the padded sequence of each word of ``text``.

    Words are tokenized one by one; the result is checked against the tokenization of the whole
    prompt, so a tokenizer that merges across words is reported rather than silently mis-mapped.
    Spans count the leading special tokens (CLIP's start token).
    """
    words = prompt_words(text)
    full = _ids(tokenizer, " ".join(words), special=True)
    core = _ids(tokenizer, " ".join(words), special=False)
    lead = _find_sub(full, core)
    per_word = [_ids(tokenizer, w, special=False) for w in words]
    if [t for ids in per_word for t in ids] != core:
        raise ValueError(f"the tokenizer does not split {text!r} at spaces; cannot map words to tokens")
    spans, pos = [], lead
    for ids in per_word:
        spans.append((pos, pos + len(ids)))
        pos += len(ids)
    if max_len is not None and pos >= max_len:
        raise ValueError(f"prompt {text!r} has {pos - lead} tokens; at most {max_len - lead - 1} fit the text encoder")
    return spans


def _find_sub(full: list[int], core: list[int]) -> int:
    for o in range(len(full) - len(core) + 1):
        if full[o : o + len(core)] == core:
            return o
    raise ValueError("the tokenizer's special tokens interleave the prompt's tokens")


def core_token_range(text: str, tokenizer) -> tuple[int, int]:
    """[start, end) of the prompt's own tokens (no special tokens) in the padded sequence."""
    spans = word_token_spans(text, tokenizer)
    if not spans:
        return (0, 0)
    return spans[0][0], spans[-1][1]


def token_indices(text: str, words: str | int | Sequence[str | int], tokenizer) -> list[int]:
    """Token positions of every occurrence of the given word(s) in ``text``; an int names one word
    by its place (0-based, as the reference's ``get_word_inds`` takes a word place), for a word
    that occurs more than once ("a red circle and a red square": 1 is the circle's colour)."""
    if isinstance(words, (str, int)):
        words = [words]
    spans = word_token_spans(text, tokenizer)
    out: list[int] = []
    for w in words:
        if isinstance(w, int):
            if not 0 <= w < len(spans):
                raise ValueError(f"word place {w} is outside {text!r} ({len(spans)} words)")
            out.extend(range(*spans[w]))
            continue
        for i in word_positions(text, w):
            out.extend(range(*spans[i]))
    return sorted(set(out))


def replacement_mapper(source: str, target: str, tokenizer, max_len: int) -> torch.Tensor:
    """Word-swap token mapping M, shape (L, L): edited attention = source attention @ M.

    Words are matched by position (same word count). A word of m source tokens swapped for one
    of n target tokens gives each target token 1/n of the m source tokens' attention, so the
    total attention on the word is kept. Special and padding tokens map to their counterparts.

    Where the swapped words have the same token counts this is the reference's mapping
    (``seq_aligner.get_replacement_mapper_`` in google/prompt-to-prompt). Where they differ we
    deliberately depart from it: after its last swapped word the reference maps target position j
    to source position j, so every later token (the following words, the end token, padding) takes
    the attention of a token shifted by the difference in token counts ("a squirrel eating a burger"
    -> "a lion eating a burger": "eating" would take the attention of one of squirrel's tokens).
    Here every later token keeps following its own word, shifted with it, so the end token takes
    the source's end token's attention.
    """
    sw, tw = prompt_words(source), prompt_words(target)
    if len(sw) != len(tw):
        raise ValueError(f"a word swap needs prompts with the same number of words; source has {len(sw)}, target {len(tw)}")
    ss, ts = word_token_spans(source, tokenizer, max_len), word_token_spans(target, tokenizer, max_len)
    M = torch.zeros(max_len, max_len)
    lead_s = ss[0][0] if ss else 0
    lead_t = ts[0][0] if ts else 0
    for j in range(min(lead_s, lead_t)):
        M[j, j] = 1.0
    for (s0, s1), (t0, t1) in zip(ss, ts):
        if s1 - s0 == t1 - t0:
            for k in range(s1 - s0):
                M[s0 + k, t0 + k] = 1.0
        else:
            M[s0:s1, t0:t1] = 1.0 / (t1 - t0)
    end_s, end_t = (ss[-1][1] if ss else lead_s), (ts[-1][1] if ts else lead_t)
    for j in range(end_t, max_len):  # end and padding tokens, in step; those past the source's end get none
        i = end_s + (j - end_t)
        if i < max_len:
            M[i, j] = 1.0
    return M


def global_alignment(a: Sequence, b: Sequence, match: float = 1.0, mismatch: float = -1.0, gap: float = 0.0) -> list[int]:
    """Needleman-Wunsch alignment of sequence ``b`` to ``a``: for each b[j], its aligned index in a or -1.

    Scores and traceback as in the reference implementation (``seq_aligner.global_align`` and
    ``get_aligned_sequences`` in google/prompt-to-prompt): match +1, mismatch -1, gap 0; walking back
    from the end, a cell whose score a gap in ``a`` explains leaves b[j] unaligned, else one whose
    score a gap in ``b`` explains skips a[i], else b[j] pairs with a[i]. So of several equal-scoring
    occurrences the leftmost is aligned (``a = [x]``, ``b = [x, x]`` aligns b[0]). With these scores
    differing elements are never paired (a mismatch never beats two gaps), and each element of
    ``a`` aligns to at most one of ``b``.
    """
    n, m = len(a), len(b)
    S = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        S[i][0] = i * gap
    for j in range(1, m + 1):
        S[0][j] = j * gap
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diag = S[i - 1][j - 1] + (match if a[i - 1] == b[j - 1] else mismatch)
            S[i][j] = max(diag, S[i - 1][j] + gap, S[i][j - 1] + gap)
    out = [-1] * m
    i, j = n, m
    while i > 0 and j > 0:  # on the border the rest is unaligned
        if S[i][j] == S[i][j - 1] + gap:  # b[j-1] unaligned
            j -= 1
        elif S[i][j] == S[i - 1][j] + gap:  # a[i-1] unaligned
            i -= 1
        else:  # the diagonal: the reference pairs them (only equal elements get here with its scores)
            out[j - 1] = i - 1
            i, j = i - 1, j - 1
    return out


def refinement_mapper(source: str, target: str, tokenizer, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token alignment for added words: (mapper (L,) long, alphas (L,) float).

    ``mapper[j]`` is the source position whose attention target token j takes; ``alphas[j]`` is
    1 where token j is aligned to a source token and 0 for new tokens, which keep their own.

    As the reference (``seq_aligner.get_mapper``): the whole token sequences, special tokens
    included, are aligned (:func:`global_alignment`), so the end token follows the source's end
    token; the positions after the target's tokens (padding) take the source's attention at the
    same positions. New tokens map to themselves (the reference: to -1); their alpha of 0 makes
    the mapping unused.
    """
    word_token_spans(source, tokenizer, max_len)  # length checks
    word_token_spans(target, tokenizer, max_len)
    src = _ids(tokenizer, " ".join(prompt_words(source)), special=True)
    tgt = _ids(tokenizer, " ".join(prompt_words(target)), special=True)
    mapper = torch.arange(max_len)
    alphas = torch.ones(max_len)
    for j, i in enumerate(global_alignment(src, tgt)):
        if i < 0:
            alphas[j] = 0.0
        else:
            mapper[j] = i
    return mapper, alphas


def equalizer(text: str, words: Sequence[str], scale: float, tokenizer, max_len: int) -> torch.Tensor:
    """Attention scale per token, shape (L,): ``scale`` at the tokens of ``words``, 1 elsewhere."""
    eq = torch.ones(max_len)
    idx = token_indices(text, words, tokenizer)
    if not idx:
        raise ValueError(f"reweight words {list(words)} do not occur in {text!r}")
    eq[idx] = float(scale)
    return eq


def step_window(frac: float | Sequence[float], num_rows: int) -> tuple[int, int]:
    """Steps [start, end) covered by a fraction (or a (start, end) pair of fractions) of ``num_rows`` steps.

    ``[int(start * num_rows), int(end * num_rows))``, the reference's rounding. Cross-attention
    windows count S + 1 rows for S steps (``ptp_utils.update_alpha_time_word``; a fraction of 1
    also covers the extra step PNDM takes), self-attention windows S
    (``AttentionControlEdit.num_self_replace``).
    """
    lo, hi = (0.0, float(frac)) if isinstance(frac, (int, float)) else (float(frac[0]), float(frac[1]))
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"step fractions must satisfy 0 <= start <= end <= 1, got {frac!r}")
    return int(lo * num_rows), int(hi * num_rows)


def cross_replace_alpha(prompts: Sequence[str], num_steps: int, steps, tokenizer, max_len: int) -> torch.Tensor:
    """1 where the target's token attention is injected from the source, per step: (S + 1, B - 1, L).

    ``steps`` is a fraction of the steps, or a dict {word: fraction} with key ``default`` for the
    other tokens (the words are looked up in the target prompts).
    """
    default, per_word = per_word_steps(steps)
    rows = num_steps + 1
    alpha = torch.zeros(rows, len(prompts) - 1, max_len)
    a, b = step_window(default, rows)
    alpha[a:b] = 1.0
    for word, frac in per_word.items():
        a, b = step_window(frac, rows)
        for i, prompt in enumerate(prompts[1:]):
            idx = token_indices(prompt, word, tokenizer)
            if not idx:
                raise ValueError(f"cross_replace_steps word {word!r} does not occur in {prompt!r}")
            alpha[:, i, idx] = 0.0
            alpha[a:b, i, idx] = 1.0
    return alpha


def cross_attention_levels(unet) -> list[int]:
    """Downsampling levels (0 = full latent resolution) that hold cross-attention layers."""
    cfg = unet.config
    n = len(cfg.block_out_channels)
    levels = {i for i, t in enumerate(cfg.down_block_types) if "CrossAttn" in t}
    levels |= {n - 1 - j for j, t in enumerate(cfg.up_block_types) if "CrossAttn" in t}
    if getattr(cfg, "mid_block_type", None) and "CrossAttn" in str(cfg.mid_block_type):
        levels.add(n - 1)
    return sorted(levels)


class AttentionStore:
    """Cross-attention maps per token, averaged over heads, layers and steps at one resolution.

    ``store_level`` is the downsampling level of the stored maps (maps of side latent / 2**level);
    ``None`` picks the level with cross-attention closest to latent / 4 (16x16 for Stable
    Diffusion, as in the paper) among those with maps of at least 8x8 (small models). Only cross-attention layers at that level compute explicit
    probabilities. ``keep_steps`` also keeps each step's map (for tests and figures).

    After sampling: ``average()`` (B, h, w, L); ``steps`` list of (B, h*w, L) per step;
    ``step_maps`` the last step's (B, h*w, L); ``total_maps`` their sum over the steps so far
    (the reference's ``attention_store``, which local blending reads).
    """

    def __init__(self, store_level: int | None = None, keep_steps: bool = False):
        self.store_level = store_level
        self.keep_steps = keep_steps
        self.num_steps = None

    # -- lifecycle ---------------------------------------------------------------------------
    def begin(self, unet, latent_hw: Sequence[int], batch: int) -> None:
        """Reset for a new sampling run of ``batch`` prompts on latents of size ``latent_hw``."""
        h, w = int(latent_hw[0]), int(latent_hw[1])
        self.batch, self.latent_hw, self.cur_step = batch, (h, w), 0
        level = self.store_level
        if level is None:
            levels = cross_attention_levels(unet) or [0]
            big = [lv for lv in levels if min(h, w) >> lv >= MIN_MAP_SIDE] or [min(levels)]
            level = min(big, key=lambda lv: (abs(lv - 2), lv))
        self.level = level
        self.store_hw = (max(1, h >> level), max(1, w >> level))
        self.store_q = self.store_hw[0] * self.store_hw[1]
        self._sum, self._n_layers = None, 0
        self._total, self._n_steps = None, 0
        self.step_maps = None
        self.steps: list[torch.Tensor] = []
        self.device = getattr(unet, "device", torch.device("cpu"))
        self.dtype = getattr(unet, "dtype", torch.float32)

    @property
    def total_maps(self) -> torch.Tensor | None:
        """(B, h*w, L) maps summed over the steps so far (each step's averaged over layers and heads)."""
        return self._total

    def needs_probs(self, is_cross: bool, n_query: int) -> bool:
        """Whether this layer (at the current step) must compute explicit attention probabilities."""
        return is_cross and n_query == self.store_q

    def self_source_rows(self, n_query: int) -> torch.Tensor | None:
        """For a self-attention call that injects the source's map: row i of the (2B,) batch takes
        the queries and keys of row ``rows[i]`` (its source's); None when nothing is injected."""
        return None

    def __call__(self, probs: torch.Tensor, is_cross: bool) -> torch.Tensor:
        """Control one layer's probabilities (2B, heads, Q, K); only the conditional half is edited."""
        B = self.batch
        return torch.cat([probs[:B], self.edit_conditional(probs[B:], is_cross)])

    def edit_conditional(self, probs: torch.Tensor, is_cross: bool) -> torch.Tensor:
        """The conditional half's probabilities (B, heads, Q, K) -> the same, edited (what the processor calls)."""
        return self.forward(probs, is_cross)

    def forward(self, attn: torch.Tensor, is_cross: bool) -> torch.Tensor:
        """(B, heads, Q, K) of the conditional branch -> the same, edited; stores cross maps."""
        if is_cross and attn.shape[2] == self.store_q:
            m = attn.float().mean(1)  # (B, Q, L)
            self._sum = m if self._sum is None else self._sum + m
            self._n_layers += 1
        return attn

    def end_step(self, latents: torch.Tensor) -> torch.Tensor:
        """Close a denoising step: fold this step's maps in, run the step callback, advance."""
        if self._n_layers:
            self.step_maps = self._sum / self._n_layers
            self._total = self.step_maps if self._total is None else self._total + self.step_maps
            self._n_steps += 1
            if self.keep_steps:
                self.steps.append(self.step_maps.cpu())
        else:
            self.step_maps = None
        latents = self.step_callback(latents)
        self._sum, self._n_layers = None, 0
        self.cur_step += 1
        return latents

    def step_callback(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    # -- results -----------------------------------------------------------------------------
    def average(self) -> torch.Tensor:
        """Per-token maps averaged over steps, layers and heads: (B, h, w, L), float32 on the CPU."""
        if self._total is None:
            raise RuntimeError(f"no cross-attention map of size {self.store_hw} was seen; choose another store_level")
        avg = (self._total / self._n_steps).cpu()
        return avg.reshape(avg.shape[0], *self.store_hw, avg.shape[-1])


class LocalBlend:
    """Keep latents outside the edited region equal to the source's (paper, sec. 3.2).

    The mask of prompt i is its cross-attention on ``words`` (those occurring in prompt i), summed
    over all steps so far (this one included), max-pooled 3x3, resized to the latent, normalised
    by its maximum and thresholded; the edited branches use the union of the source's mask and
    their own. Applied after every step, as ``LocalBlend`` of the reference's
    ``prompt-to-prompt_stable.ipynb`` (it reads ``AttentionStore.attention_store``, the running sum
    that ``between_steps`` has already updated with the current step).

    ``start_blend`` (default 0, the reference's) delays blending to steps i >= int(start_blend * S)
    (0-based), the ``counter > start_blend`` rule of the reference's null-text notebook, whose
    LocalBlend uses 0.2.
    """

    def __init__(self, prompts: Sequence[str], words: Sequence[str | int], tokenizer, max_len: int, threshold: float = 0.3,
                 start_blend: float = 0.0):
        self.alpha = torch.zeros(len(prompts), max_len)  # (B, L)
        for i, p in enumerate(prompts):
            idx = token_indices(p, list(words), tokenizer)
            self.alpha[i, idx] = 1.0
        if not bool(self.alpha.any()):
            raise ValueError(f"blend words {list(words)} occur in none of the prompts")
        self.threshold, self.start_blend = float(threshold), float(start_blend)
        self._alpha = self.alpha
        self._last_mask = None

    def begin(self, device) -> None:
        """Move the word weights to the sampling device (once per run)."""
        self._alpha = self.alpha.to(device)
        self._last_mask = None

    @property
    def last_mask(self) -> torch.Tensor | None:
        """The mask of the last blended step, (B, 1, h, w) bool on the CPU (None before any)."""
        return None if self._last_mask is None else self._last_mask.cpu()

    def mask(self, maps: torch.Tensor, map_hw: tuple[int, int], latent_hw: tuple[int, int]) -> torch.Tensor:
        """(B, Q, L) maps -> boolean mask (B, 1, h, w) at the latent size (union with the source's)."""
        m = (maps * _like(self._alpha, maps)[:, None, :]).sum(-1)
        m = m.reshape(m.shape[0], 1, *map_hw)
        m = F.max_pool2d(m, 3, stride=1, padding=1)
        m = F.interpolate(m, size=tuple(latent_hw), mode="nearest")
        m = m / m.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
        mask = m > self.threshold
        return mask[:1] | mask

    def __call__(self, latents: torch.Tensor, maps, map_hw, step: int, num_steps: int) -> torch.Tensor:
        """Blend after step ``step`` (0-based) of ``num_steps``; ``maps`` (B, Q, L) summed over the steps so far."""
        if maps is None or step < int(self.start_blend * num_steps):
            return latents
        mask = self.mask(maps, map_hw, latents.shape[-2:])
        self._last_mask = mask
        return latents[:1] + mask.to(latents.dtype) * (latents - latents[:1])


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``t`` on ``ref``'s device and dtype: itself when it already is (the usual case, after begin())."""
    return t if (t.device == ref.device and t.dtype == ref.dtype) else t.to(ref)


class AttentionEdit(AttentionStore):
    """Base of the editing controllers: prompt 0 is the source, prompts 1.. are edited.

    During the cross window the edited branches' cross-attention becomes
    ``alpha * edit_cross(source, own) + (1 - alpha) * own`` (alpha per token and step); during the
    self window their self-attention at maps of at most ``self_max_tokens`` pixels (default
    1/16 of the latent's, as in the paper, but at least 8x8 for small models) is the source's.
    Maps are stored after editing.
    """

    def __init__(
        self,
        prompts: Sequence[str],
        tokenizer,
        num_steps: int,
        cross_replace_steps,
        self_replace_steps,
        max_len: int,
        local_blend: LocalBlend | None = None,
        self_max_tokens: int | None = None,
        store_level: int | None = None,
        keep_steps: bool = False,
    ):
        super().__init__(store_level=store_level, keep_steps=keep_steps)
        if len(prompts) < 2:
            raise ValueError("an edit needs a source and at least one target prompt")
        self.prompts, self.tokenizer, self.max_len = list(prompts), tokenizer, max_len
        self.num_steps = int(num_steps)
        self.cross_alpha = cross_replace_alpha(self.prompts, self.num_steps, cross_replace_steps, tokenizer, max_len)
        self.self_window = step_window(self_replace_steps, self.num_steps)
        self.local_blend = local_blend
        self.self_max_tokens_arg = self_max_tokens

    def begin(self, unet, latent_hw, batch):
        """Reset for a run; move the edit's tensors to the UNet's device once and decide, per step,
        on the host, whether cross/self-attention is injected (no device sync in attention calls)."""
        if batch != len(self.prompts):
            raise ValueError(f"the controller was built for {len(self.prompts)} prompts, got {batch}")
        super().begin(unet, latent_hw, batch)
        h, w = self.latent_hw
        default = max((h * w) // 16, MIN_MAP_SIDE**2)
        self.self_max_tokens = self.self_max_tokens_arg if self.self_max_tokens_arg is not None else default
        rows = self.cross_alpha.shape[0]  # S + 1
        lo, hi = self.self_window
        self.cross_on = [bool(self.cross_alpha[r].any()) for r in range(rows)]
        self.self_on = [lo <= r < hi for r in range(rows)]
        self.to_device(self.device, self.dtype)
        if self.local_blend is not None:
            self.local_blend.begin(self.device)
        # unconditional rows keep their own queries and keys; the conditional ones take the source's
        self._self_rows = torch.cat([torch.arange(batch), torch.full((batch,), batch)]).to(self.device)

    def to_device(self, device, dtype) -> None:
        """Copies of the edit's tensors on the sampling device, in the attention's dtype."""
        self._cross_alpha = self.cross_alpha.to(device, dtype)

    def _row(self) -> int:
        return min(self.cur_step, self.num_steps)

    def _alpha_now(self) -> torch.Tensor:
        return self._cross_alpha[self._row()]  # (B - 1, L) on the device

    def cross_active(self) -> bool:
        return self.cross_on[self._row()]

    def self_active(self, n_query: int) -> bool:
        return n_query <= self.self_max_tokens and self.self_on[self._row()]

    def needs_probs(self, is_cross: bool, n_query: int) -> bool:
        """Cross-attention during the cross window or at the stored size. Self-attention never: its
        injection takes the fused route (:meth:`self_source_rows`)."""
        if is_cross:
            return self.cross_active() or n_query == self.store_q
        return False

    def self_source_rows(self, n_query: int) -> torch.Tensor | None:
        """During the self window at small maps, every edited branch attends with the source's
        queries and keys to its own values: softmax(q_s k_s^T / sqrt(d)) v_i, the source's
        self-attention map applied to branch i, which is what replacing its probabilities by the
        source's gives (the explicit route below), computed by the fused kernel (no (Q, Q) matrix)."""
        return self._self_rows if self.self_active(n_query) else None

    def forward(self, attn, is_cross):
        base, own = attn[0], attn[1:]
        if is_cross and self.cross_active():
            a = _like(self._alpha_now(), attn)[:, None, None, :]  # (B - 1, 1, 1, L)
            own = self.edit_cross(base, own) * a + (1 - a) * own
            attn = torch.cat([base[None], own])
        elif not is_cross and self.self_active(attn.shape[2]):
            attn = base[None].expand_as(attn).clone()
        return super().forward(attn, is_cross)

    def edit_cross(self, base: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """Source (heads, Q, L) and edited (B-1, heads, Q, L) cross-attention -> injected (B-1, heads, Q, L)."""
        raise NotImplementedError

    def step_callback(self, latents):
        if self.local_blend is None:
            return latents
        return self.local_blend(latents, self.total_maps, self.store_hw, self.cur_step, self.num_steps)


class Replace(AttentionEdit):
    """Word swap: the target takes the source's attention through the token mapping matrix."""

    def __init__(self, prompts, tokenizer, num_steps, cross_replace_steps, self_replace_steps, max_len, **kw):
        super().__init__(prompts, tokenizer, num_steps, cross_replace_steps, self_replace_steps, max_len, **kw)
        self.mapper = torch.stack([replacement_mapper(prompts[0], p, tokenizer, max_len) for p in prompts[1:]])  # (B-1, L, L)
        self._mapper = self.mapper

    def to_device(self, device, dtype):
        super().to_device(device, dtype)
        self._mapper = self.mapper.to(device, dtype)

    def edit_cross(self, base, own):
        return torch.einsum("hql,bln->bhqn", base, _like(self._mapper, base))


class Refine(AttentionEdit):
    """Words added or removed: aligned tokens take the source's attention, new tokens keep theirs."""

    def __init__(self, prompts, tokenizer, num_steps, cross_replace_steps, self_replace_steps, max_len, **kw):
        super().__init__(prompts, tokenizer, num_steps, cross_replace_steps, self_replace_steps, max_len, **kw)
        maps = [refinement_mapper(prompts[0], p, tokenizer, max_len) for p in prompts[1:]]
        self.mapper = torch.stack([m for m, _ in maps])  # (B-1, L)
        self.alphas = torch.stack([a for _, a in maps])  # (B-1, L)
        self._mapper, self._alphas = self.mapper, self.alphas

    def to_device(self, device, dtype):
        super().to_device(device, dtype)
        self._mapper, self._alphas = self.mapper.to(device), self.alphas.to(device, dtype)

    def edit_cross(self, base, own):
        mapper = self._mapper if self._mapper.device == base.device else self._mapper.to(base.device)
        taken = base[:, :, mapper].permute(2, 0, 1, 3)  # (B-1, heads, Q, L)
        a = _like(self._alphas, base)[:, None, None, :]
        return taken * a + own * (1 - a)


class Reweight(AttentionEdit):
    """Attention equalizer: multiply chosen tokens' attention by a scale, after an optional edit."""

    def __init__(self, prompts, tokenizer, num_steps, cross_replace_steps, self_replace_steps, max_len, equalizer: torch.Tensor, prev: AttentionEdit | None = None, **kw):
        super().__init__(prompts, tokenizer, num_steps, cross_replace_steps, self_replace_steps, max_len, **kw)
        self.equalizer = equalizer.reshape(-1, max_len)  # (1 or B-1, L)
        self._equalizer = self.equalizer
        self.prev = prev

    def to_device(self, device, dtype):
        super().to_device(device, dtype)
        self._equalizer = self.equalizer.to(device, dtype)
        if self.prev is not None:  # its edit_cross runs inside ours; its begin() is never called
            self.prev.to_device(device, dtype)

    def edit_cross(self, base, own):
        if self.prev is not None:
            base = self.prev.edit_cross(base, own)  # (B-1, heads, Q, L)
        else:
            base = base[None].expand_as(own)
        return base * _like(self._equalizer, base)[:, None, None, :]


class Unedited(AttentionStore):
    """A member of a :class:`ControllerBatch` that samples its prompts without control (and stores
    their maps): a no-control baseline beside the edits, in their batch."""

    def __init__(self, prompts: Sequence[str], store_level: int | None = None, keep_steps: bool = False):
        super().__init__(store_level=store_level, keep_steps=keep_steps)
        self.prompts = list(prompts)


class ControllerBatch(AttentionStore):
    """Several edits sampled in one batch: controller i edits its own consecutive prompts (its
    source, then its targets), and the batch is the concatenation of their prompts in order.

    Each controller sees exactly the slice of probabilities and latents it would see alone. The
    processor computes explicit probabilities for the whole batch when any controller needs them,
    so give the batch controllers with the same step windows (e.g. one edit type over many seeds):
    then a batch gives each edit what sampling it alone gives, up to float rounding.
    """

    def __init__(self, controllers: Sequence[AttentionEdit | Unedited]):
        super().__init__()
        self.controllers = list(controllers)
        if not self.controllers:
            raise ValueError("a controller batch needs at least one controller")
        self.sizes = [len(c.prompts) for c in self.controllers]

    def begin(self, unet, latent_hw, batch):
        if batch != sum(self.sizes):
            raise ValueError(f"the controllers edit {sum(self.sizes)} prompts in all, got {batch}")
        self.batch, self.cur_step = batch, 0
        self._rows_cache: dict[tuple[bool, ...], torch.Tensor] = {}
        for c, n in zip(self.controllers, self.sizes):
            c.begin(unet, latent_hw, n)

    def needs_probs(self, is_cross: bool, n_query: int) -> bool:
        return any(c.needs_probs(is_cross, n_query) for c in self.controllers)

    def self_source_rows(self, n_query: int) -> torch.Tensor | None:
        """Each controller's source row for its slice of the conditional half where it injects, the
        slice's own rows where it does not. Built on the host once per pattern of injecting controllers."""
        rows = [c.self_source_rows(n_query) for c in self.controllers]
        key = tuple(r is not None for r in rows)
        if not any(key):
            return None
        if key not in self._rows_cache:
            off, parts = self.batch, [torch.arange(self.batch)]  # the unconditional half keeps its own
            for r, n in zip(rows, self.sizes):
                parts.append(torch.full((n,), off) if r is not None else torch.arange(off, off + n))
                off += n
            self._rows_cache[key] = torch.cat(parts).to(next(r for r in rows if r is not None).device)
        return self._rows_cache[key]

    def edit_conditional(self, probs: torch.Tensor, is_cross: bool) -> torch.Tensor:
        """(B, heads, Q, K) of the conditional half: each controller edits its slice."""
        return torch.cat([c.forward(p, is_cross) for c, p in zip(self.controllers, probs.split(self.sizes))])

    def end_step(self, latents: torch.Tensor) -> torch.Tensor:
        out = torch.cat([c.end_step(x) for c, x in zip(self.controllers, latents.split(self.sizes))])
        self.cur_step += 1
        return out


def make_controller(
    mode: str,
    prompts: Sequence[str],
    tokenizer,
    num_steps: int,
    cross_replace_steps=0.8,
    self_replace_steps=0.4,
    reweight: dict | None = None,
    blend_words: Sequence[str | int] | None = None,
    mask_threshold: float = 0.3,
    *,
    base_mode: str | None = None,
    max_len: int | None = None,
    self_max_tokens: int | None = None,
    store_level: int | None = None,
    keep_steps: bool = False,
    start_blend: float = 0.0,
) -> AttentionEdit:
    """The controller of one edit.

    Args:
        mode: replace | refine | reweight. ``reweight`` (``{"words": [...], "scale": s}``) also
            applies on top of replace/refine; mode reweight follows ``base_mode`` (replace, refine
            or none; default: none when the prompts are equal, refine otherwise).
        max_len: padded prompt length (default: the tokenizer's ``model_max_length``).
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    prompts = list(prompts)
    if max_len is None:
        max_len = text_max_length(tokenizer)
    kw = dict(self_max_tokens=self_max_tokens, store_level=store_level, keep_steps=keep_steps)
    if blend_words:
        kw["local_blend"] = LocalBlend(prompts, blend_words, tokenizer, max_len, mask_threshold, start_blend)
    args = (prompts, tokenizer, num_steps, cross_replace_steps, self_replace_steps, max_len)
    if mode == "reweight":
        if not reweight:
            raise ValueError("mode reweight needs a reweight block {words, scale}")
        same = all(_norm_prompt(p) == _norm_prompt(prompts[0]) for p in prompts)
        if base_mode in (None, ""):
            base_mode = "none" if same else "refine"
        if base_mode == "none" and not same:
            raise ValueError("base_mode none reweights the source prompt itself; the target must equal the source")
        mode = base_mode
    base = None
    if mode == "replace":
        base = Replace(*args, **kw)
    elif mode == "refine":
        base = Refine(*args, **kw)
    elif mode != "none":
        raise ValueError(f"base_mode {mode!r} is not one of replace, refine, none")
    if not reweight:
        return base
    eq = torch.stack([equalizer(p, reweight["words"], reweight["scale"], tokenizer, max_len) for p in prompts[1:]])
    return Reweight(*args, equalizer=eq, prev=base, **kw)


def attention_probs(query: torch.Tensor, key: torch.Tensor, scale: float, mask: torch.Tensor | None = None, upcast: bool = True) -> torch.Tensor:
    """softmax(q k^T * scale + mask): (N, heads, Q, d), (N, heads, K, d) -> (N, heads, Q, K)."""
    dtype = query.dtype
    if upcast:
        query, key = query.float(), key.float()
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask.to(scores.dtype)
    return scores.softmax(dim=-1).to(dtype)


class P2PAttnProcessor:
    """A diffusers attention processor that lets a prompt-to-prompt controller edit attention.

    Three routes per call, asked of the controller:

    * explicit (``controller.needs_probs``): attention probabilities are computed, edited by the
      controller and applied to the values (cross-attention edits, the attention store);
    * source queries (``controller.self_source_rows``): self-attention injection, run by the fused
      kernel with each edited branch's queries and keys replaced by its source's;
    * default: diffusers' ``AttnProcessor2_0`` (fused ``F.scaled_dot_product_attention``).

    Counts the routes in ``explicit_calls``, ``source_calls`` and ``sdpa_calls``.
    """

    def __init__(self, controller: AttentionStore, name: str):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.controller, self.name = controller, name
        self.default = AttnProcessor2_0()
        self.explicit_calls = 0
        self.source_calls = 0
        self.sdpa_calls = 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        is_cross = encoder_hidden_states is not None
        n_query = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[2] * hidden_states.shape[3]
        explicit = self.controller.needs_probs(is_cross, n_query)
        rows = None if explicit or is_cross else self.controller.self_source_rows(n_query)
        if not explicit and rows is None:
            self.sdpa_calls += 1
            return self.default(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, seq_len, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, seq_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if explicit:  # the conditional half explicitly; the unconditional half, never edited, fused
            self.explicit_calls += 1
            u = batch - self.controller.batch
            cond_mask = None if attention_mask is None else attention_mask[u:]
            probs = attention_probs(query[u:], key[u:], head_dim**-0.5, cond_mask)  # SDPA's default scale
            probs = self.controller.edit_conditional(probs, is_cross)
            out = torch.matmul(probs.to(value.dtype), value[u:])  # (B, heads, Q, d)
            if u:
                uncond_mask = None if attention_mask is None else attention_mask[:u]
                out = torch.cat([F.scaled_dot_product_attention(query[:u], key[:u], value[:u], attn_mask=uncond_mask), out])
        else:  # softmax(q_src k_src^T / sqrt(d)) v: the source's map on each branch's own values
            self.source_calls += 1
            if attention_mask is not None:
                attention_mask = attention_mask[rows]
            out = F.scaled_dot_product_attention(query[rows], key[rows], value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install(unet, controller: AttentionStore) -> dict[str, Any]:
    """Put a :class:`P2PAttnProcessor` on every attention layer; return the previous processors."""
    previous = dict(unet.attn_processors)
    procs = {name: P2PAttnProcessor(controller, name) for name in previous}
    unet.set_attn_processor(dict(procs))  # diffusers pops entries from the dict it is given
    controller.processors = procs
    return previous


def edit_controller(edit: dict, tokenizer, num_steps: int, max_len: int, mask_threshold: float, **kw) -> AttentionEdit:
    """The controller of one ``p2p.edits`` entry."""
    return make_controller(
        edit["mode"], [edit["source"], edit["target"]], tokenizer, num_steps,
        edit.get("cross_replace_steps", 0.8), edit.get("self_replace_steps", 0.4),
        reweight=edit.get("reweight"), blend_words=edit.get("blend_words"), mask_threshold=mask_threshold,
        base_mode=edit.get("base_mode"), max_len=max_len, **kw,
    )


def edit_tokens(edit: dict, tokenizer, max_len: int) -> tuple[list[int], list[int]]:
    """Tokens of the edited words in the source and in the target (what the region mask follows).

    Blend words when given; otherwise swapped words (replace), new or dropped tokens (refine), and
    reweighted words.
    """
    src, tgt = edit["source"], edit["target"]
    if edit.get("blend_words"):
        return token_indices(src, edit["blend_words"], tokenizer), token_indices(tgt, edit["blend_words"], tokenizer)
    s_idx: set[int] = set()
    t_idx: set[int] = set()
    sw, tw = prompt_words(src), prompt_words(tgt)
    if len(sw) == len(tw) and edit["mode"] != "refine":
        ss, ts = word_token_spans(src, tokenizer), word_token_spans(tgt, tokenizer)
        for k, (a, b) in enumerate(zip(sw, tw)):
            if normalize_word(a) != normalize_word(b):
                s_idx.update(range(*ss[k]))
                t_idx.update(range(*ts[k]))
    else:
        _, alphas = refinement_mapper(src, tgt, tokenizer, max_len)
        t0, t1 = core_token_range(tgt, tokenizer)
        t_idx.update(j for j in range(t0, t1) if alphas[j] == 0)
        _, back = refinement_mapper(tgt, src, tokenizer, max_len)
        s0, s1 = core_token_range(src, tokenizer)
        s_idx.update(j for j in range(s0, s1) if back[j] == 0)
    for w in (edit.get("reweight") or {}).get("words", []):
        s_idx.update(token_indices(src, w, tokenizer))
        t_idx.update(token_indices(tgt, w, tokenizer))
    return sorted(s_idx), sorted(t_idx)


def attention_mask(maps: torch.Tensor, tokens: Sequence[int], threshold: float, size: tuple[int, int]) -> torch.Tensor:
    """Region of one prompt's attention on ``tokens``: (h, w, L) maps -> (H, W) bool at ``size``."""
    if not tokens:
        return torch.zeros(size, dtype=torch.bool)
    m = maps[..., list(tokens)].sum(-1)[None, None]
    m = F.interpolate(m, size=size, mode="nearest")[0, 0]
    return m / m.max().clamp_min(1e-12) > threshold


def inside_outside(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean attention per token inside and outside an object: how much a word's map lies on it.

    maps (N, h, w, L) (:meth:`AttentionStore.average`), masks (N, H, W) bool with H, W multiples
    of h, w (each map is upsampled nearest to the mask's size). Returns (inside, outside), each
    (N, L); an image whose mask is empty or full gets nan on the side it lacks.
    """
    n, h, w, _ = maps.shape
    H, W = masks.shape[-2:]
    if H % h or W % w:
        raise ValueError(f"mask size {(H, W)} is not a multiple of the map size {(h, w)}")
    up = maps.repeat_interleave(H // h, dim=1).repeat_interleave(W // w, dim=2).reshape(n, H * W, -1).float()
    m = masks.reshape(n, H * W, 1).float()
    n_in, n_out = m.sum(1), (1 - m).sum(1)  # (N, 1)
    inside = (up * m).sum(1) / n_in
    outside = (up * (1 - m)).sum(1) / n_out
    return inside.masked_fill(n_in == 0, float("nan")), outside.masked_fill(n_out == 0, float("nan"))


def region_mask(store: AttentionEdit, edit: dict, tokenizer, max_len: int, threshold: float, size: tuple[int, int]) -> tuple[torch.Tensor, str]:
    """The edited region at image size, (H, W) bool, and where it came from.

    With local blend: its last mask. Otherwise: the union of the source's and the edited branch's
    step-averaged attention on the edited words, thresholded at ``threshold`` of its maximum.
    """
    if store.local_blend is not None and store.local_blend.last_mask is not None:
        m = store.local_blend.last_mask[1:2].float()
        return F.interpolate(m, size=size, mode="nearest")[0, 0].bool(), "local_blend"
    avg = store.average()
    s_tok, t_tok = edit_tokens(edit, tokenizer, max_len)
    return attention_mask(avg[0], s_tok, threshold, size) | attention_mask(avg[1], t_tok, threshold, size), "attention"


def token_labels(text: str, tokenizer) -> list[tuple[int, str]]:
    """(position, text) of the prompt's own tokens, for figure labels."""
    s0, s1 = core_token_range(text, tokenizer)
    ids = _ids(tokenizer, " ".join(prompt_words(text)), special=True)
    out = []
    for pos in range(s0, s1):
        tok = tokenizer.convert_ids_to_tokens(int(ids[pos]))
        out.append((pos, str(tok).replace("</w>", "")))
    return out
