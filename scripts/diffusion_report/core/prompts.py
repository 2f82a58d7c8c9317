"""Prompt words and the cross-field checks of ``p2p.edits``: pure Python, no torch.

Used both by ``rules/common.smk`` (before any job runs, through diffusion_report.config) and by
the prompt-to-prompt stage itself, so the two can never disagree.
"""

from __future__ import annotations

import string
from typing import Sequence

MODES = ("replace", "refine", "reweight")
_PUNCT = string.punctuation


PAIR_WORD = "and"  # joins the two objects of a two-object caption of the shapes generator
PAIR_OBJECT_WORDS = ((1, 2), (5, 6))  # word places of the (colour, shape) of the left and the right object in that caption


def split_pair_caption(text: str) -> tuple[list[tuple[str, str]], str] | None:
    """([(colour, shape) left, (colour, shape) right], background) of a caption in the shapes
    generator's two-object form, "a <colour> <shape> and a <colour> <shape> on a <background>
    background", by word position only (the vocabulary is checked by
    ``models.shapes.parse_pair_caption``); None when the text does not have that form."""
    w = " ".join(str(text).lower().split()).split(" ")
    if len(w) != 11 or [w[0], w[3], w[4], w[7], w[8], w[10]] != ["a", PAIR_WORD, "a", "on", "a", "background"]:
        return None
    return [(w[c], w[s]) for c, s in PAIR_OBJECT_WORDS], w[9]


def normalize_word(word: str) -> str:
    """Case- and punctuation-insensitive form of a word, for matching config words to prompts."""
    return word.strip().strip(_PUNCT).lower()


def prompt_words(text: str) -> list[str]:
    """The words of a prompt: split on whitespace."""
    return text.split()


def word_positions(text: str, word: str) -> list[int]:
    """Indices of the words of ``text`` equal to ``word`` (case and punctuation ignored)."""
    key = normalize_word(word)
    return [i for i, w in enumerate(prompt_words(text)) if normalize_word(w) == key]


def per_word_steps(steps) -> tuple:
    """(default, {word: fraction}) of a ``cross_replace_steps`` value: a fraction for every token, or
    the reference's per-word dict whose key ``default`` (or ``default_``) is the other tokens'
    fraction (1 when absent, as the reference); values are returned as given."""
    if not isinstance(steps, dict):
        return steps, {}
    per_word = dict(steps)
    default = per_word.pop("default", per_word.pop("default_", 1.0))
    return default, per_word


def _norm_prompt(text: str) -> list[str]:
    return [normalize_word(w) for w in prompt_words(text)]


def validate_edits(edits: Sequence[dict], tokenizer_max_words: int | None = None, prefix: str = "p2p.edits") -> list[str]:
    """Cross-field checks of ``p2p.edits`` that the schema cannot express; one message per problem.

    ``prefix`` is the list's key in the messages (``p2p.real_edits[0].edits`` for the edits of a
    given image, whose source is its prompt).

    Covers empty prompts, duplicate names, a word swap between prompts of different word counts,
    a reweight block on an edit of another mode,
    reweight / blend / per-word cross_replace_steps words missing from the prompts, and (when
    ``tokenizer_max_words`` is given) prompts longer than that many words.
    """
    errors: list[str] = []
    seen: set[str] = set()
    for i, e in enumerate(edits):
        name = str(e.get("name", f"#{i}"))
        key = f"{prefix}[{i}] ({name})"
        if name in seen:
            errors.append(f"{key}: duplicate name {name!r}; edit names must be unique (they name result folders)")
        seen.add(name)
        src, tgt = str(e.get("source") or ""), str(e.get("target") or "")
        empty = False
        for label, text in (("source", src), ("target", tgt)):
            if not text.strip():
                errors.append(f"{key}: {label} prompt is empty")
                empty = True
            elif tokenizer_max_words is not None and len(prompt_words(text)) > tokenizer_max_words:
                errors.append(f"{key}: {label} prompt has {len(prompt_words(text))} words; at most {tokenizer_max_words} fit the text encoder")
        mode = e.get("mode")
        if mode not in MODES:
            errors.append(f"{key}: mode {mode!r} is not one of {', '.join(MODES)}")
        if empty:
            continue
        ns, nt = len(prompt_words(src)), len(prompt_words(tgt))
        base_mode = e.get("base_mode")
        if (mode == "replace" or (mode == "reweight" and base_mode == "replace")) and ns != nt:
            errors.append(f"{key}: mode replace needs prompts with the same number of words; source has {ns}, target {nt}")
        if mode == "reweight" and base_mode == "none" and _norm_prompt(src) != _norm_prompt(tgt):
            errors.append(f"{key}: base_mode none reweights the source prompt itself, so target must equal source; "
                          "use base_mode replace or refine for a different target")
        rw = e.get("reweight")
        if mode != "reweight" and "reweight" in e:
            errors.append(f"{key}: reweight is only used with mode reweight (mode is {mode!r})")
        if mode == "reweight" and not rw:
            errors.append(f"{key}: mode reweight needs a reweight block {{words: [...], scale: ...}}")
        for w in (rw or {}).get("words", []) or []:
            if not word_positions(tgt, w):
                errors.append(f"{key}: reweight word {w!r} is not in the target prompt {tgt!r}")
        for w in e.get("blend_words") or []:
            if not word_positions(src, w) and not word_positions(tgt, w):
                errors.append(f"{key}: blend word {w!r} is in neither prompt")
        for w in per_word_steps(e.get("cross_replace_steps"))[1]:
            if not word_positions(tgt, w):
                errors.append(f"{key}: cross_replace_steps word {w!r} is not in the target prompt {tgt!r}")
    return errors
