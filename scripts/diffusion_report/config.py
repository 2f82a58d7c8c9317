"""Config validation: the JSON schema (through Snakemake's ``validate``) plus cross-field checks.

Called from ``rules/common.smk`` before any job runs. Imports nothing heavy (no torch), so that
``snakemake -n`` stays fast. Every problem becomes one line naming the key, the value and what is
allowed; all of them are reported at once.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

MAX_PROMPT_WORDS = 75  # CLIP's 77 tokens minus <bos>/<eos>; the exact token count is checked at run time


class ConfigError(ValueError):
    """The configuration is invalid; the message has one line per problem."""


def _path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


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
    if error.validator == "oneOf":
        return f"{key}: {error.instance!r} must be a fraction in [0, 1] or a mapping of words to such fractions"
    return f"{key}: {error.message}"


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
    import yaml

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    return [_format_schema_error(e) for e in errors] or ["config does not match schemas/config.schema.yaml"]


def words(prompt: str) -> list[str]:
    """Words of a prompt as prompt-to-prompt counts them (split on white space)."""
    return prompt.split()


def _norm(word: str) -> str:
    return re.sub(r"[^\w-]", "", word.lower())


def edit_errors(edits: list[dict], prefix: str = "p2p.edits") -> list[str]:
    """Cross-field checks of prompt-to-prompt edits that the schema cannot express."""
    out: list[str] = []
    seen: set[str] = set()
    for i, edit in enumerate(edits):
        key = f"{prefix}[{i}] ({edit.get('name', '?')})"
        name = edit.get("name")
        if name in seen:
            out.append(f"{key}.name: {name!r} is used twice; edit names must be unique")
        seen.add(name)
        src, tgt = words(edit["source"]), words(edit["target"])
        for label, ws in (("source", src), ("target", tgt)):
            if len(ws) > MAX_PROMPT_WORDS:
                out.append(f"{key}.{label}: {len(ws)} words; at most {MAX_PROMPT_WORDS} fit the text encoder")
        mode = edit["mode"]
        base = edit.get("base_mode", "none") if mode == "reweight" else mode
        if base == "replace" and len(src) != len(tgt):
            out.append(
                f"{key}: mode {mode}{' after replace' if mode == 'reweight' else ''} swaps words one for one, "
                f"so source and target need the same number of words; source has {len(src)}, target {len(tgt)} "
                "(use mode refine to add words)"
            )
        if mode == "reweight" and "reweight" not in edit:
            out.append(f"{key}.reweight: mode reweight needs reweight: {{words: [...], scale: ...}}")
        if mode != "reweight" and "reweight" in edit:
            out.append(f"{key}.reweight: only used with mode reweight (mode is {mode!r})")
        all_words = {_norm(w) for w in src + tgt}
        for w in edit.get("reweight", {}).get("words", []):
            if _norm(w) not in {_norm(x) for x in tgt}:
                out.append(f"{key}.reweight.words: {w!r} is not a word of the target prompt {edit['target']!r}")
        for w in edit.get("blend_words", []) or []:
            if _norm(w) not in all_words:
                out.append(f"{key}.blend_words: {w!r} is in neither prompt")
        crs = edit.get("cross_replace_steps")
        if isinstance(crs, dict):
            for w in crs:
                if w != "default" and _norm(w) not in {_norm(x) for x in tgt}:
                    out.append(f"{key}.cross_replace_steps: {w!r} is not a word of the target prompt (or 'default')")
    return out


def model_errors(model_cfg: dict, key: str, expect: str) -> list[str]:
    """A pretrained model that can be seen to be missing before any job runs.

    ``expect`` is the file that marks the layout: "config.json" for a bare UNet2DModel folder or
    "model_index.json" for a pipeline folder (either is accepted with a unet/ subfolder).
    """
    if model_cfg.get("source") != "pretrained":
        return []
    where = model_cfg["pretrained"]
    path = Path(where).expanduser()
    looks_local = path.exists() or where.startswith((".", "/", "~")) or where.count("/") > 1
    if looks_local:
        if not path.is_dir():
            return [f"{key}.pretrained: folder {where!r} does not exist (give a local diffusers folder or a hub id owner/name)"]
        markers = [expect, "model_index.json", "unet/config.json", "config.json"]
        if not any((path / m).exists() for m in markers):
            return [f"{key}.pretrained: folder {where!r} has none of {', '.join(markers)}; it is not a diffusers model folder"]
        return []
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
    if offline:
        try:
            from huggingface_hub import scan_cache_dir

            cached = {r.repo_id for r in scan_cache_dir().repos}
        except Exception:  # noqa: BLE001 - no cache folder at all
            cached = set()
        if where not in cached:
            return [
                f"{key}.pretrained: {where!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                f"run `huggingface-cli download {where}` where the hub is reachable, or set {key}.pretrained to a local folder"
            ]
    return []


def cross_field_errors(config: dict, base_dir: str | os.PathLike = ".") -> list[str]:
    """Checks that span several keys, run after the schema passed."""
    from .images import check_image, image_name

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
            for n in dd["step_counts"]:
                if n > T:
                    out.append(f"ddim.step_counts: {n} is above the training T = {T} (schedule.T); allowed 1..{T}")
            tr = dd["train"]
            levels = len(tr["channels"]) - 1
            if tr["image_size"] % (2**levels):
                out.append(f"ddim.train.image_size: {tr['image_size']} is not divisible by 2^{levels} for {len(tr['channels'])} channel levels")
        out += model_errors(dd["model"], "ddim.model", "config.json")
    p2p = config["p2p"]
    if p2p["enabled"]:
        out += edit_errors(p2p["edits"])
        out += model_errors(p2p["model"], "p2p.model", "model_index.json")
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


def validate_config(config: dict, schema_path: str | os.PathLike, base_dir: str | os.PathLike = ".") -> None:
    """Schema first (fills defaults), then cross-field checks; raise ConfigError listing all problems."""
    errors = schema_errors(config, schema_path)
    if not errors:
        errors = cross_field_errors(config, base_dir) + output_errors(base_dir)
    if errors:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  config error: {e}" for e in errors))
