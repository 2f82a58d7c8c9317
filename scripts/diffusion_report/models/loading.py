"""Model loading and device selection, shared by the DDIM and prompt-to-prompt stages.

One loader takes a hub id or a local folder, honours the Hugging Face cache and HF_HUB_OFFLINE,
prefers safetensors, never runs code from a model folder, and on failure says what was looked for
and how to provide it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")


class ModelNotFoundError(RuntimeError):
    """A model id or folder could not be loaded; the message says how to provide it."""


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device that is absent is an error."""
    if name not in DEVICES:
        raise ValueError(f"device: {name!r} is not one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but no CUDA device is available (use auto or cpu)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device: 'mps' was asked for but MPS is not available (use auto or cpu)")
    return torch.device(name)


PRECISIONS = ("auto", "float32", "bfloat16")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions and matmuls natively: a CUDA GPU with
    bf16 support, or a CPU with AVX512-BF16 / AMX as oneDNN reports it. Elsewhere bf16 is emulated
    and slower than float32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a torch build without oneDNN's query
            return False
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """``float32`` or ``bfloat16`` for the network evaluations on ``device``. ``auto`` is bfloat16
    where :func:`native_bf16` holds, else float32; an explicit bfloat16 is honoured everywhere."""
    if name not in PRECISIONS:
        raise ValueError(f"precision: {name!r} is not one of {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    return name


def autocast(device: torch.device, precision: str):
    """The context a sampler runs in: ``torch.autocast`` to bfloat16 (convolutions, linear layers
    and attention in bf16; normalisation, softmax and the sampler's own update arithmetic stay in
    float32), or no change for float32."""
    import contextlib

    if precision == "float32":
        return contextlib.nullcontext()
    if precision != "bfloat16":
        raise ValueError(f"precision: {precision!r} is not float32 or bfloat16 (resolve auto first)")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def not_found(what: str, where: str, *, config_key: str, subfolder: str | None, cause: Exception) -> ModelNotFoundError:
    """The error for a model part that cannot be loaded: what was looked for, and how to provide it."""
    part = f" (subfolder {subfolder!r})" if subfolder else ""
    if Path(where).expanduser().exists():
        hint = (
            f"the local folder {where!r}{part} exists but does not hold a loadable {what} "
            "(expected config.json and diffusion_pytorch_model.safetensors or model.safetensors, "
            "tokenizer files in tokenizer/, scheduler_config.json in scheduler/)"
        )
    else:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
        hint = (
            f"{where!r}{part} is not a local folder and was not found in the Hugging Face cache"
            + (" (HF_HUB_OFFLINE is set, so the hub was not asked)" if offline else "")
            + f". Download it on a machine with internet: `hf download {where}` "
            f"(then copy ~/.cache/huggingface), or set `{config_key}` to a local folder"
        )
    return ModelNotFoundError(f"{config_key}: cannot load {what}: {hint}. Cause: {cause}")


def load_part(load, what: str, where: str | os.PathLike, *, config_key: str, subfolder: str | None = None):
    """``load()`` (any ``from_pretrained``/``load_config`` call), with its failure turned into :func:`not_found`."""
    try:
        return load()
    except (OSError, ValueError) as exc:
        raise not_found(what, str(where), config_key=config_key, subfolder=subfolder, cause=exc) from exc


def load_pretrained(cls, id_or_path: str | os.PathLike, *, config_key: str, subfolder: str | None = None, **kwargs):
    """``cls.from_pretrained(id_or_path)`` with safetensors preferred and an actionable error.

    ``config_key`` names the config key the value came from, so the error can say what to change.
    A local folder is used as is; anything else is a hub id looked up in the Hugging Face cache
    (and downloaded only when HF_HUB_OFFLINE is unset and the hub is reachable).
    """
    kwargs.setdefault("use_safetensors", None)  # prefer safetensors, fall back to .bin only if absent
    kwargs.pop("trust_remote_code", None)  # never execute code from a model folder
    where = str(id_or_path)
    if subfolder:
        kwargs["subfolder"] = subfolder
    return load_part(lambda: cls.from_pretrained(where, **kwargs), cls.__name__, where, config_key=config_key, subfolder=subfolder)


def read_json(id_or_path: str | os.PathLike, filename: str, *, config_key: str, subfolder: str | None = None) -> dict:
    """A model's JSON file (``config.json``, ``scheduler_config.json``) from a local folder or the
    Hugging Face cache, without importing diffusers or transformers; errors as :func:`load_pretrained`'s."""
    import json

    where = str(id_or_path)
    rel = f"{subfolder}/{filename}" if subfolder else filename

    def load():
        if Path(where).expanduser().is_dir():
            path = Path(where).expanduser() / rel
            if not path.is_file():
                raise OSError(f"{path} does not exist")
        else:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(where, filename, subfolder=subfolder)
        return json.loads(Path(path).read_text())

    return load_part(load, filename, where, config_key=config_key, subfolder=subfolder)

