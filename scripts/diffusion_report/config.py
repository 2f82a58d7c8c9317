"""Config validation: the JSON schema (through Snakemake's ``validate``) plus cross-field checks.

Called from ``rules/common.smk`` before any job runs. Imports nothing heavy (no torch), so that
``snakemake -n`` stays fast. Every problem becomes one line naming the key, the value and what is
allowed; all of them are reported at once.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
from pathlib import Path

MAX_PROMPT_WORDS = 75  # CLIP's 77 tokens minus <bos>/<eos>; the exact token count is checked at run time


class ConfigError(ValueError):
    """The configuration is invalid; the message has one line per problem."""


def _join(key: str, part) -> str:
    """``key`` extended by a list index or a mapping key: ``p2p.edits[0].source``; a mapping key
    that is not a plain word is quoted (``cross_replace_steps['two words']``)."""
    if isinstance(part, int) and not isinstance(part, bool):
        return f"{key}[{part}]"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", str(part)):
        return f"{key}[{part!r}]"
    return f"{key}.{part}" if key else str(part)


def _path(error) -> str:
    """The key in the style of the cross-field checks: ``p2p.edits[0].source``."""
    out = ""
    for part in error.absolute_path:
        out = _join(out, part)
    return out or "(top level)"


# What str.splitlines breaks at: a value holding one must not split a "config error:" line in two.
_LINE_BREAKS = {c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


def _one_line(text: str) -> str:
    return "".join(_LINE_BREAKS.get(c, c) for c in text)


# What a value of each schema type looks like, for a string that would have been one
_TEXT_LOOKS_LIKE = {"integer": r"[-+]?\d+", "number": r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", "boolean": r"(?i:true|false)"}
NESTED_CONFIG_HINT = (
    "(snakemake reads nested values given with --config KEY='{...}' as text; put them in a YAML file "
    "and pass --configfile FILE, or give them in config.yaml)"
)


def _format_schema_error(error) -> str:
    """One line from a jsonschema ValidationError: key, value and what is allowed."""
    key = _path(error)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
        parts = []
        for name in extra:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            parts.append(f"unknown key {name!r}{hint}")
        where = "" if key == "(top level)" else f"{key}: "
        return f"{where}{'; '.join(parts) or error.message}; allowed keys: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"{key}: {error.instance!r} is not allowed; allowed: {', '.join(map(repr, error.validator_value))}"
    if error.validator in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        sch = error.schema
        lo = f"[{sch['minimum']}" if "minimum" in sch else f"({sch['exclusiveMinimum']}" if "exclusiveMinimum" in sch else "(-inf"
        hi = f"{sch['maximum']}]" if "maximum" in sch else f"{sch['exclusiveMaximum']})" if "exclusiveMaximum" in sch else "inf)"
        kind = "an integer" if sch.get("type") == "integer" else "a number"
        return f"{key}: {error.instance!r} is out of range; allowed: {kind} in {lo}, {hi}"
    if error.validator == "oneOf" and key.endswith(".image.draw") and isinstance(error.instance, dict):
        import jsonschema

        one = ("shape", "colour", "cx", "cy", "radius")
        branch = 1 if "objects" in error.instance else 0  # the form the drawing was meant to be
        if branch and any(k in error.instance for k in one):
            detail = f"; it has objects and {', '.join(k for k in one if k in error.instance)}"
        else:
            inner = [e for e in error.context if e.relative_schema_path and e.relative_schema_path[0] == branch]
            detail = "; " + _format_schema_error(jsonschema.exceptions.best_match(inner)) if inner else ""
        return (f"{key}: one object needs shape, colour, cx, cy and radius; two objects need objects (left, right) "
                f"instead of those{detail}")
    if error.validator == "oneOf" and key.endswith(".image"):
        detail = ""
        if isinstance(error.instance, dict):  # the drawing branch: say what is wrong inside it
            import jsonschema

            inner = [e for e in error.context if e.validator != "type" or e.absolute_path != error.absolute_path]
            if inner:
                detail = "; " + _format_schema_error(jsonschema.exceptions.best_match(inner))
        return (f"{key}: must be an image file (a path) or {{draw: {{shape, colour, background, cx, cy, radius}}}} "
                f"(two objects: {{draw: {{background, objects: [...]}}}}){detail}")
    if error.validator == "oneOf":
        return f"{key}: {error.instance!r} must be a fraction in [0, 1] or a mapping of words to such fractions"
    if error.validator in ("pattern", "minLength") and isinstance(error.instance, str) and not error.instance.strip():
        noun = "prompt" if key.endswith((".source", ".target")) else "value"
        return f"{key}: the {noun} is empty ({error.instance!r}); write some text"
    if error.validator == "pattern" and error.schema.get("description"):
        return f"{key}: {error.instance!r} is not allowed: {error.schema['description']}"
    if error.validator == "type" and isinstance(error.instance, str):
        wanted = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        if any(re.fullmatch(_TEXT_LOOKS_LIKE.get(t, "(?!)"), error.instance.strip()) for t in wanted):
            return f"{key}: {error.message} {NESTED_CONFIG_HINT}"
    return f"{key}: {error.message}"


@functools.lru_cache(maxsize=4)
def _load_schema(path: str, mtime_ns: int) -> dict:
    import yaml

    return yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def schema_errors(config: dict, schema_path: str | os.PathLike) -> list[str]:
    """Validate with Snakemake's ``validate`` (which also fills in defaults); list every problem."""
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    try:
        validate(config, str(schema_path))
        return []
    except WorkflowError:
        pass
    # Snakemake reports the best match only; list all problems, one line each.
    import jsonschema

    validator = jsonschema.Draft202012Validator(_load_schema(str(schema_path), Path(schema_path).stat().st_mtime_ns))
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    lines = list(dict.fromkeys(_format_schema_error(e) for e in errors))  # an empty string breaks two rules, say it once
    return lines or ["config does not match schemas/config.schema.yaml"]


def edit_errors(edits: list[dict]) -> list[str]:
    """Cross-field checks of prompt-to-prompt edits (the same function the stage itself runs)."""
    from diffusion_report.core.prompts import validate_edits

    return validate_edits(edits, tokenizer_max_words=MAX_PROMPT_WORDS)


# Files each component of a local model folder needs, as the loaders read them (ddim.load_model,
# text2image.load): (label, alternatives); one of the alternatives must be a file.
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                      "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin.index.json")
_TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model")


def _weights(sub: str, names: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    return (f"{sub}{names[0]} (or {names[1]})", tuple(sub + n for n in names))


def required_model_files(expect: str, folder: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(what, alternatives) per required file of a local model folder.

    ``expect`` "config.json": a bare UNet2DModel folder (ddim.load_model): config.json, weights and
    a scheduler config (at the top or in scheduler/). "model_index.json": a text-to-image pipeline
    folder (text2image.load): unet/, text_encoder/, tokenizer/, scheduler/, and vae/ when present.
    """
    if expect == "config.json":
        return [("config.json", ("config.json",)), _weights("", _DIFFUSERS_WEIGHTS),
                ("scheduler_config.json (or scheduler/scheduler_config.json)", ("scheduler_config.json", "scheduler/scheduler_config.json"))]
    need = [("unet/config.json", ("unet/config.json",)), _weights("unet/", _DIFFUSERS_WEIGHTS),
            ("text_encoder/config.json", ("text_encoder/config.json",)), _weights("text_encoder/", _TRANSFORMERS_WEIGHTS),
            (f"tokenizer/ files ({', '.join(_TOKENIZER_FILES[:-1])} or {_TOKENIZER_FILES[-1]})", tuple("tokenizer/" + n for n in _TOKENIZER_FILES)),
            ("scheduler/scheduler_config.json", ("scheduler/scheduler_config.json",))]
    if (folder / "vae").is_dir():  # a latent model; without vae/ it is a pixel-space one
        need += [("vae/config.json", ("vae/config.json",)), _weights("vae/", _DIFFUSERS_WEIGHTS)]
    return need


def model_errors(model_cfg: dict, key: str, expect: str) -> list[str]:
    """A pretrained model that can be seen to be missing before any job runs.

    ``expect`` is the file that marks the layout: "config.json" for a bare UNet2DModel folder or
    "model_index.json" for a pipeline folder; a local folder must hold every file its loader reads
    (:func:`required_model_files`).
    """
    if model_cfg.get("source") != "pretrained":
        return []
    where = model_cfg["pretrained"]
    path = Path(where).expanduser()
    looks_local = path.exists() or where.startswith((".", "/", "~")) or where.count("/") > 1
    if looks_local:
        if not path.is_dir():
            return [f"{key}.pretrained: folder {where!r} does not exist (give a local diffusers folder or a hub id owner/name)"]
        missing = [what for what, names in required_model_files(expect, path) if not any((path / n).is_file() for n in names)]
        if missing:
            kind = "UNet2DModel" if expect == "config.json" else "text-to-image pipeline"
            return [f"{key}.pretrained: folder {where!r} is not a complete diffusers {kind} folder; "
                    f"missing: {'; '.join(missing)}"]
        return []
    if hf_offline():
        if not in_hf_cache(where):
            return [
                f"{key}.pretrained: {where!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                f"run `hf download {where}` where the hub is reachable, or set {key}.pretrained to a local folder"
            ]
        return []
    if not in_hf_cache(where):  # it would be downloaded in a job: see now that the hub answers
        why = hub_unreachable(hub_endpoint(), HUB_TIMEOUT_S)
        if why:
            return [
                f"{key}.pretrained: {where!r} is not in the Hugging Face cache and the hub ({hub_endpoint()}) "
                f"did not answer within {HUB_TIMEOUT_S:g} s ({why}); check the network (or HF_ENDPOINT, HTTPS_PROXY), "
                f"run `hf download {where}` where the hub is reachable, or set {key}.pretrained to a local folder"
            ]
    return []


HUB_TIMEOUT_S = 3.0  # how long the config check waits for the hub (a job's own download would wait ~30 s)


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or "https://huggingface.co"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub finds it, read from the environment now."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def in_hf_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import scan_cache_dir

        return repo_id in {r.repo_id for r in scan_cache_dir(hf_cache_dir()).repos}
    except Exception:  # noqa: BLE001 - no cache folder at all
        return False


@functools.lru_cache(maxsize=None)
def hub_unreachable(endpoint: str, timeout: float) -> str | None:
    """None when ``endpoint`` answers an HTTP request within ``timeout`` seconds (any status: an
    answer is an answer), else why not. The request runs in a daemon thread joined for ``timeout``,
    so name resolution cannot stretch the wait either."""
    import threading
    import urllib.error
    import urllib.request

    result: dict[str, str] = {}

    def probe():
        try:
            with urllib.request.urlopen(urllib.request.Request(endpoint + "/api/models?limit=1", method="HEAD"), timeout=timeout):
                result["ok"] = ""
        except urllib.error.HTTPError:
            result["ok"] = ""
        except Exception as exc:  # noqa: BLE001 - URLError, timeouts, refused connections, bad URLs
            result["why"] = str(getattr(exc, "reason", None) or exc) or type(exc).__name__

    thread = threading.Thread(target=probe, name="hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if "ok" in result:
        return None
    return result.get("why", "no answer")


# The embedded model's tokenizer (t2i.build_tokenizer) splits text like tokenizers' Whitespace
# pre-tokenizer: runs of word characters and runs of punctuation, each one token.
_EMBEDDED_TOKEN = re.compile(r"\w+|[^\w\s]+")


def embedded_tokens(text: str) -> list[str]:
    """The tokens the embedded model's tokenizer makes of ``text`` (without the start and end tokens)."""
    return _EMBEDDED_TOKEN.findall(text)


def t2i_errors(t2i: dict, p2p: dict, base_dir: str | os.PathLike = ".", workflow_dir: str | os.PathLike | None = None) -> list[str]:
    """The embedded text-to-image model: step counts within its T, a consistent palette and sizes,
    prompts within its vocabulary and its text window, and shipped weights present when it is not retrained."""
    out: list[str] = []
    T = t2i["schedule"]["T"]
    for key, n in (("t2i.samples.num_steps", t2i["samples"]["num_steps"]), ("t2i.eval.num_steps", t2i["eval"]["num_steps"]),
                   ("p2p.num_inference_steps", p2p["num_inference_steps"])):
        if n > T:
            out.append(f"{key}: {n} is above the embedded model's training T = {T} (t2i.schedule.T); allowed 1..{T}")
    data = t2i["data"]
    lo, hi = data["radius"]
    if lo >= hi:
        out.append(f"t2i.data.radius: [{lo}, {hi}] needs min below max")
    if hi > data["image_size"] / 2:
        out.append(f"t2i.data.radius: max {hi} does not fit an image of {data['image_size']} pixels (at most {data['image_size'] / 2})")
    if not data["small_below"] < data["big_above"]:
        out.append(f"t2i.data.small_below: {data['small_below']} must be below t2i.data.big_above ({data['big_above']})")
    two = float(data.get("two_objects", 0.0))
    plo, phi = data.get("pair_radius", (2.5, 3.25))
    half = (data["image_size"] - 1) / 4  # shapes.PAIR_GAP: a pair's objects each fit their half
    if two > 0 and not plo <= phi <= half:
        out.append(f"t2i.data.pair_radius: [{plo}, {phi}] needs min <= max <= {half:g} (each object of a pair fits its half of an "
                   f"image of {data['image_size']} pixels)")
    if two > 0 and int(t2i["model"]["max_length"]) < 13:
        out.append(f"t2i.model.max_length: {t2i['model']['max_length']} cannot hold a two-object caption (11 words and the start "
                   "and end tokens: at least 13) while t2i.data.two_objects > 0")
    pair_edits = sorted({e for key in ("eval", "tradeoff") for e in (t2i.get(key) or {}).get("edits", []) if e.startswith("pair_")})
    if pair_edits and two <= 0:
        out.append(f"t2i.eval.edits: {', '.join(pair_edits)} edit two-object captions, which this model was not trained on "
                   "(t2i.data.two_objects is 0); set t2i.data.two_objects above 0 and retrain, or drop them")
    drawn_pairs = [e for e in ((p2p.get("real_eval") or {}).get("edits") or []) if e.startswith("pair_")]
    if drawn_pairs and two <= 0 and (p2p.get("real_eval") or {}).get("enabled", True):
        out.append(f"p2p.real_eval.edits: {', '.join(drawn_pairs)} draw two objects, which this model was not trained on "
                   "(t2i.data.two_objects is 0); set t2i.data.two_objects above 0 and retrain, or drop them")
    colourless = sorted({e for key in ("eval", "tradeoff") for e in (t2i.get(key) or {}).get("edits", []) if e == "refine_colour"})
    if colourless and float(data.get("colour_word_prob", 1.0)) >= 1.0:
        out.append("t2i.eval.edits: refine_colour starts from captions that name no colour, which this model was not trained on "
                   "(t2i.data.colour_word_prob is 1); set t2i.data.colour_word_prob below 1 and retrain, or drop it")
    both = sorted(set(data["colours"]) & set(data["backgrounds"]))
    if both:
        out.append(f"t2i.data: {', '.join(both)} is both a shape colour and a background word; the captions would be ambiguous")
    every_colour_named = float(data.get("colour_word_prob", 1.0)) >= 1.0  # every training caption named a colour
    for i, edit in enumerate(p2p["edits"]):
        for label in ("source", "target"):
            key = f"p2p.edits[{i}] ({edit['name']}).{label}"
            unknown = vocabulary_errors(key, edit[label], t2i, "; use p2p.model.source: pretrained for free text")
            out += unknown
            words = set(embedded_tokens(edit[label].lower()))
            if every_colour_named and not unknown and words & set(data["shapes"]) and not words & set(data["colours"]):
                out.append(f"{key}: {edit[label]!r} names no colour, which this model was not trained on "
                           "(t2i.data.colour_word_prob is 1); name a colour, or set t2i.data.colour_word_prob below 1 and retrain")
    for i, edit in enumerate(p2p["edits"]):
        for label in ("source", "target"):
            out += window_errors(f"p2p.edits[{i}] ({edit['name']}).{label}", edit[label], t2i)
    if not t2i["train"]:
        folder = Path(base_dir, workflow_path(t2i["weights"], base_dir, workflow_dir))
        if not (folder / "SHA256SUMS").is_file() or not (folder / "model").is_dir():
            out.append(_missing_weights("t2i.weights", folder, "t2i.train: true"))
    return out


def embedded_vocabulary(t2i: dict) -> set[str]:
    """Every word the embedded model's captions use (t2i.data), and "" (an empty prompt)."""
    data = t2i["data"]
    pair = {"and"} if float(data.get("two_objects", 0.0)) > 0 else set()
    return {"a", "on", "background", "small", "big", ""} | pair | set(data["shapes"]) | set(data["colours"]) | set(data["backgrounds"])


def vocabulary_errors(key: str, text: str, t2i: dict, hint: str = "") -> list[str]:
    """The words of a prompt outside the embedded model's vocabulary (case and punctuation ignored)."""
    from diffusion_report.core.prompts import normalize_word

    vocab = embedded_vocabulary(t2i)
    unknown = sorted({w for w in text.split() if normalize_word(w) not in vocab})
    if not unknown:
        return []
    return [f"{key}: {', '.join(map(repr, unknown))} not in the embedded model's vocabulary ({', '.join(sorted(vocab - {''}))}){hint}"]


def window_errors(key: str, text: str, t2i: dict) -> list[str]:
    """A prompt with more tokens than the embedded model's text window holds."""
    window = int(t2i["model"]["max_length"])
    n = len(embedded_tokens(text))
    if n <= window - 2:
        return []
    return [f"{key}: {n} tokens; at most {window - 2} fit the embedded model's text window (t2i.model.max_length = {window}, "
            "the start and end tokens included); shorten the prompt"]


PAIR_GAP = 1.0  # models.shapes.PAIR_GAP (not imported: validating the config imports no torch)


def drawing_errors(key: str, draw: dict, data: dict) -> list[str]:
    """A ``p2p.real_edits`` drawing outside the generator's vocabulary or its image: one object
    anywhere in the image, or two (``objects``), each inside its half (left, then right; the
    halves of :func:`models.shapes.sample_pairs`, which only a two-object model has seen)."""
    out: list[str] = []
    size = float(data["image_size"])
    bg = list(data["backgrounds"])
    if draw["background"] not in bg:
        out.append(f"{key}.background: {draw['background']!r} is not in t2i.data ({', '.join(map(repr, bg))})")
    pair = "objects" in draw
    if pair and float(data.get("two_objects", 0.0)) <= 0:
        out.append(f"{key}.objects: a two-object drawing needs a model trained on two-object captions (t2i.data.two_objects is 0); "
                   "set t2i.data.two_objects above 0 and retrain, or draw one object")
    half = (size - PAIR_GAP) / 2
    objects = draw["objects"] if pair else [draw]
    for k, obj in enumerate(objects):
        at = f"{key}.objects[{k}]" if pair else key
        for attr, allowed in (("shape", list(data["shapes"])), ("colour", list(data["colours"]))):
            if obj[attr] not in allowed:
                out.append(f"{at}.{attr}: {obj[attr]!r} is not in t2i.data ({', '.join(map(repr, allowed))})")
        r = float(obj["radius"])
        lo_x, hi_x = (0.0, size) if not pair else (0.0, half) if k == 0 else (half + PAIR_GAP, size)
        for axis, (lo, hi) in (("cx", (lo_x, hi_x)), ("cy", (0.0, size))):
            c = float(obj[axis])
            if not lo + r <= c <= hi - r:
                where = f"the {data['image_size']}-pixel image" if not pair or axis == "cy" else f"the {('left', 'right')[k]} half ({lo:g}..{hi:g})"
                out.append(f"{at}.{axis}: {c:g} puts the shape (radius {r:g}) outside {where}; allowed {lo + r:g}..{hi - r:g}")
    return out


def real_edit_errors(t2i: dict | None, p2p: dict, base_dir: str | os.PathLike = ".") -> list[str]:
    """``p2p.real_edits``: an image file that cannot be read, duplicate names and the checks of
    ``p2p.edits`` (names, modes, words) on the edits; on the embedded model (``t2i`` given) also a
    drawing outside the generator's vocabulary or the image, step counts above T, prompts and edits
    outside the vocabulary or the text window. With a pretrained model (``t2i`` None) drawn images
    are skipped, as the workflow skips them: the drawn shapes are the embedded model's."""
    from diffusion_report.core.prompts import validate_edits
    from diffusion_report.images import check_image

    out: list[str] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(p2p.get("real_edits") or []):
        key = f"p2p.real_edits[{i}] ({entry['name']})"
        if entry["name"] in seen:
            out.append(f"{key}: duplicate name {entry['name']!r} (also p2p.real_edits[{seen[entry['name']]}]); names must be "
                       "unique (they name result folders)")
        seen.setdefault(entry["name"], i)
        image = entry["image"]
        if t2i is None and not isinstance(image, str):
            continue  # a drawn image is the embedded model's: skipped with a pretrained one (see rules/p2p.smk)
        edits = [dict(e, source=entry["prompt"]) for e in entry["edits"]]
        if isinstance(image, str):
            problem = check_image(image, base_dir)
            if problem:
                out.append(f"{key}.image: {problem}")
        out += validate_edits(edits, tokenizer_max_words=MAX_PROMPT_WORDS, prefix=f"{key}.edits")
        if t2i is None:
            continue
        data, T = t2i["data"], int(t2i["schedule"]["T"])
        if not isinstance(image, str):
            out += drawing_errors(f"{key}.image.draw", image["draw"], data)
        steps = int(entry.get("num_inversion_steps", 20))
        if steps > T:
            out.append(f"{key}.num_inversion_steps: {steps} is above the embedded model's training T = {T} (t2i.schedule.T); allowed 1..{T}")
        out += vocabulary_errors(f"{key}.prompt", entry["prompt"], t2i)
        out += window_errors(f"{key}.prompt", entry["prompt"], t2i)
        for j, e in enumerate(entry["edits"]):
            out += vocabulary_errors(f"{key}.edits[{j}] ({e['name']}).target", e["target"], t2i)
            out += window_errors(f"{key}.edits[{j}] ({e['name']}).target", e["target"], t2i)
    return out


def cross_field_errors(config: dict, base_dir: str | os.PathLike = ".", workflow_dir: str | os.PathLike | None = None) -> list[str]:
    """Checks that span several keys, run after the schema passed."""
    from diffusion_report.images import check_image, image_name

    out: list[str] = []
    sch = config["schedule"]
    T = sch["T"]
    if sch["kind"] != "cosine" and not sch["beta_start"] < sch["beta_end"]:
        out.append(f"schedule.beta_start: {sch['beta_start']} must be below schedule.beta_end ({sch['beta_end']})")
    fwd = config["forward"]
    if fwd["enabled"]:
        for t in fwd["show_timesteps"]:
            if t > T:
                out.append(f"forward.show_timesteps: {t} is above schedule.T = {T}; allowed 0..{T}")
        if fwd["mse_max_t"] > T:
            out.append(f"forward.mse_max_t: {fwd['mse_max_t']} is above schedule.T = {T}; allowed 1..{T}")
        names = {}
        for i, src in enumerate(fwd["images"]):
            problem = check_image(src, base_dir)
            if problem:
                out.append(f"forward.images[{i}]: {problem}")
            n = image_name(src)
            if n in names:
                out.append(f"forward.images[{i}]: {src!r} has the same name {n!r} as forward.images[{names[n]}]")
            names[n] = i
    th = config["theory"]
    if th["enabled"]:
        for t in th["check_timesteps"]:
            if t > T:
                out.append(f"theory.check_timesteps: {t} is above schedule.T = {T}; allowed 1..{T}")
    dd = config["ddim"]
    if dd["enabled"]:
        if dd["model"]["source"] == "train":
            counts = [("ddim.step_counts", n) for n in dd["step_counts"]]
            for part in ("quality", "reconstruction"):
                if dd.get(part, {}).get("enabled", True):
                    counts += [(f"ddim.{part}.step_counts", n) for n in dd.get(part, {}).get("step_counts", [])]
            if dd.get("interpolation", {}).get("enabled", True):
                counts.append(("ddim.interpolation.steps", dd.get("interpolation", {}).get("steps", 1)))
            for key, n in counts:
                if n > T:
                    out.append(f"{key}: {n} is above the training T = {T} (schedule.T); allowed 1..{T}")
            if not dd.get("retrain", False):
                folder = Path(base_dir, workflow_path(dd.get("weights", "models/ddim-digits"), base_dir, workflow_dir))
                if not (folder / "SHA256SUMS").is_file() or not (folder / "model").is_dir():
                    out.append(_missing_weights("ddim.weights", folder, "ddim.retrain: true"))
        elif dd.get("quality", {}).get("enabled", True):
            out.append("ddim.quality.enabled: the quality table scores samples with the digit reader, so it needs "
                       "ddim.model.source: train; set ddim.quality.enabled: false for a pretrained model")
            tr = dd["train"]
            levels = len(tr["channels"]) - 1
            if tr["image_size"] % (2**levels):
                out.append(f"ddim.train.image_size: {tr['image_size']} is not divisible by 2^{levels} for {len(tr['channels'])} channel levels")
        out += model_errors(dd["model"], "ddim.model", "config.json")
    p2p = config["p2p"]
    if p2p["enabled"]:
        out += edit_errors(p2p["edits"])
        out += model_errors(p2p["model"], "p2p.model", "model_index.json")
    if p2p["enabled"] and p2p["model"]["source"] == "train" and "t2i" in config:
        out += t2i_errors(config["t2i"], p2p, base_dir, workflow_dir)
        out += real_edit_errors(config["t2i"], p2p, base_dir)
    elif p2p["enabled"] and p2p["model"]["source"] == "pretrained":
        out += real_edit_errors(None, p2p, base_dir)
    return out


def output_errors(base_dir: str | os.PathLike = ".") -> list[str]:
    """The results, logs and benchmarks folders must be (or become) writable folders."""
    out = []
    for name in ("results", "logs", "benchmarks"):
        path = Path(base_dir, name)
        if path.exists() and not path.is_dir():
            out.append(f"{name}/: {str(path)!r} exists but is not a folder; move it away so the workflow can write there")
        elif path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
            out.append(f"{name}/: {str(path)!r} is not writable; fix its permissions or run from another folder")
        elif not path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
            out.append(f"{name}/: cannot create {str(path)!r}: {str(path.parent)!r} is not writable")
    return out


def nonfinite_errors(node, key: str = "") -> list[str]:
    """NaN and infinities anywhere in the config (YAML's .nan/.inf): JSON schema bounds let NaN through."""
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{key or '(top level)'}: {node!r} is not a finite number"]
    if isinstance(node, dict):
        return [e for k, v in node.items() for e in nonfinite_errors(v, _join(key, k))]
    if isinstance(node, list):
        return [e for i, v in enumerate(node) for e in nonfinite_errors(v, _join(key, i))]
    return []


def workflow_path(path: str, base_dir: str | os.PathLike = ".", workflow_dir: str | os.PathLike | None = None) -> str:
    """A relative path from config (a shipped model folder), looked up in the working directory
    ``base_dir`` first, then in the workflow's own folder (when snakemake runs with ``-d`` elsewhere,
    or the workflow is a module of another one). Unchanged when found in neither."""
    if workflow_dir is None or Path(path).is_absolute() or Path(base_dir, path).exists() or not Path(workflow_dir, path).exists():
        return path
    return str(Path(workflow_dir, path).resolve())


def _missing_weights(key: str, folder: Path, retrain: str) -> str:
    return (f"{key}: {str(folder)!r} has no model/ and SHA256SUMS (a relative path is looked up in the working "
            f"directory, then in the workflow's folder); give the folder of the shipped weights, or set {retrain} "
            "to train the model here")


def validate_config(config: dict, schema_path: str | os.PathLike, base_dir: str | os.PathLike = ".",
                    workflow_dir: str | os.PathLike | None = None) -> None:
    """Schema first (fills defaults), then cross-field checks; raise ConfigError listing all problems.

    ``base_dir`` is the working directory; shipped model folders are also looked up in ``workflow_dir``."""
    errors = schema_errors(config, schema_path)
    said = tuple(e.split(": ", 1)[0] for e in errors)  # a key the schema already rejected, or its parent
    errors += [e for e in nonfinite_errors(config)
               if not any(e.split(": ", 1)[0] == k or e.startswith((k + ".", k + "[")) for k in said)]
    if not errors:
        errors = cross_field_errors(config, base_dir, workflow_dir) + output_errors(base_dir)
    if errors:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  config error: {_one_line(e)}" for e in errors))
