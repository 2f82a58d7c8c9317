"""The embedded text-to-image model: a pixel-space diffusers UNet2DConditionModel conditioned on a
tiny CLIPTextModel through cross-attention, trained jointly on captioned shapes (``shapes.py``).

Saved in the standard diffusers folder layout, so the prompt-to-prompt stage loads it like Stable
Diffusion (there is no ``vae/``: it works in pixel space)::

    model/unet/          UNet2DConditionModel  (config.json, diffusion_pytorch_model.safetensors)
    model/text_encoder/  CLIPTextModel         (config.json, model.safetensors)
    model/tokenizer/     word-level PreTrainedTokenizerFast (AutoTokenizer.from_pretrained loads it)
    model/scheduler/     DDPMScheduler config  (its own small T, cosine schedule)
    model/model_index.json, model/t2i_config.json (the config block that made it)

Caption dropout (the empty prompt ``""``) trains the unconditional branch for classifier-free
guidance. All randomness comes from generators seeded by ``io.make_generator``.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from diffusion_report.io import atomic_path, make_generator
from diffusion_report.models import shapes
from diffusion_report.models.ddpm import DIFFUSERS_BETA_SCHEDULE
from diffusion_report.models.files import T2I_WEIGHT_FILES
from diffusion_report.models.training import ema_update, lr_at

log = logging.getLogger(__name__)


PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"


# --------------------------------------------------------------------------- tokenizer
def build_tokenizer(vocabulary: list[str], max_length: int):
    """A word-level tokenizer over ``vocabulary`` (lower-cased, split on whitespace/punctuation).

    ids: 0 pad, 1 bos, 2 eos, 3 unk, then the words in order. ``tok(text)`` gives
    ``[bos, w1, ..., wn, eos]``; padded to ``max_length`` with ``padding="max_length"``.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, BOS: 1, EOS: 2, UNK: 3}
    for w in vocabulary:
        w = w.lower()
        if w not in vocab:
            vocab[w] = len(vocab)
    tk = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=int(max_length),
        padding_side="right",
    )


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Prompts -> input ids (B, model_max_length), padded like Stable Diffusion's pipeline."""
    from diffusion_report.models.text2image import tokenize as tokenize_padded

    return tokenize_padded(tokenizer, prompts, tokenizer.model_max_length)


# --------------------------------------------------------------------------- models
def build_text_encoder(model_cfg: dict, tokenizer):
    """A tiny CLIPTextModel (causal transformer, like SD's) sized by ``t2i.model``."""
    from transformers import CLIPTextConfig, CLIPTextModel

    width = int(model_cfg["text_width"])
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=int(model_cfg["text_layers"]),
        num_attention_heads=int(model_cfg["text_heads"]),
        max_position_embeddings=int(tokenizer.model_max_length),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        projection_dim=width,
    )
    return CLIPTextModel(cfg)


def build_unet(model_cfg: dict, image_size: int):
    """UNet2DConditionModel in pixel space (3 -> 3 channels).

    ``channels`` gives one block per resolution (image_size, /2, /4, ...); the first
    ``attention_levels`` resolutions (and the mid block) have cross-attention to the text.
    """
    from diffusers import UNet2DConditionModel

    channels = tuple(int(c) for c in model_cfg["channels"])
    n_attn = int(model_cfg["attention_levels"])
    if not 1 <= n_attn <= len(channels):
        raise ValueError(f"t2i.model.attention_levels must be in 1..{len(channels)}")
    down = tuple("CrossAttnDownBlock2D" if i < n_attn else "DownBlock2D" for i in range(len(channels)))
    up = tuple(reversed(tuple("CrossAttnUpBlock2D" if i < n_attn else "UpBlock2D" for i in range(len(channels)))))
    return UNet2DConditionModel(
        sample_size=int(image_size),
        in_channels=3,
        out_channels=3,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=channels,
        layers_per_block=int(model_cfg["layers_per_block"]),
        cross_attention_dim=int(model_cfg["text_width"]),
        attention_head_dim=int(model_cfg["attention_heads"]),
        norm_num_groups=min(8, channels[0]),
    )


def build_scheduler(schedule_cfg: dict):
    """The training DDPMScheduler (its own T; cosine = squaredcos_cap_v2, eps-prediction)."""
    from diffusers import DDPMScheduler

    kind = schedule_cfg["kind"]
    if kind not in DIFFUSERS_BETA_SCHEDULE:
        raise ValueError(f"t2i.schedule.kind {kind!r} not one of {', '.join(DIFFUSERS_BETA_SCHEDULE)}")
    return DDPMScheduler(
        num_train_timesteps=int(schedule_cfg["T"]),
        beta_schedule=DIFFUSERS_BETA_SCHEDULE[kind],
        beta_start=float(schedule_cfg.get("beta_start", 1e-4)),
        beta_end=float(schedule_cfg.get("beta_end", 0.02)),
        prediction_type="epsilon",
        clip_sample=bool(schedule_cfg.get("clip_sample", True)),
        clip_sample_range=1.0,
    )


@dataclass
class T2IModel:
    """The four parts of the text-to-image model (pixel space, no VAE)."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    spec: shapes.ShapeSpec

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> text embeddings (B, L, text_width)."""
        ids = tokenize(self.tokenizer, prompts).to(next(self.text_encoder.parameters()).device)
        return self.text_encoder(ids)[0]


def build_model(cfg: dict) -> T2IModel:
    """Fresh (untrained) model from the ``t2i`` config block; torch's global RNG is NOT used:
    initial weights are drawn from a generator seeded by ``cfg['seed']``."""
    spec = shapes.ShapeSpec.from_config(cfg["data"])
    tok = build_tokenizer(spec.vocabulary(), int(cfg["model"]["max_length"]))
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(make_generator(cfg["seed"], "t2i/init").initial_seed())
        text = build_text_encoder(cfg["model"], tok)
        unet = build_unet(cfg["model"], spec.image_size)
    finally:
        torch.random.set_rng_state(state)
    return T2IModel(unet, text, tok, build_scheduler(cfg["schedule"]), spec)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------- training
def training_batch(spec: shapes.ShapeSpec, batch_size: int, caption_dropout: float, gen: torch.Generator):
    """One batch: images (B,3,H,W), prompts (B,) with each replaced by "" with prob caption_dropout
    (one or two objects per image, :func:`shapes.sample_mixed`)."""
    images, captions = shapes.sample_mixed(spec, batch_size, gen)
    drop = (torch.rand(batch_size, generator=gen) < caption_dropout).tolist()
    prompts = ["" if d else c for c, d in zip(captions, drop)]
    return images, prompts


def diffusion_loss(model: T2IModel, images: torch.Tensor, prompts: list[str], gen: torch.Generator, device="cpu") -> torch.Tensor:
    """Epsilon-prediction MSE at uniform t in 0..T-1 (diffusers indexing). images (B,3,H,W) -> scalar."""
    sched = model.scheduler
    b = images.shape[0]
    t = torch.randint(sched.config.num_train_timesteps, (b,), generator=gen)
    noise = torch.randn(images.shape, generator=gen)
    noisy = sched.add_noise(images, noise, t).to(device)
    noise, t = noise.to(device), t.to(device)
    cond = model.encode(prompts)
    pred = model.unet(noisy, t, encoder_hidden_states=cond).sample
    return F.mse_loss(pred, noise)


def train(
    cfg: dict,
    steps: int | None = None,
    model: T2IModel | None = None,
    log_every: int = 50,
    device: str | torch.device = "cpu",
    max_seconds: float | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 250,
) -> tuple[T2IModel, pd.DataFrame]:
    """Train the model of the ``t2i`` config block; returns the EMA model and the loss curve.

    The loss curve has one row per step: step, loss, lr, seconds (wall-clock since start; the only
    non-deterministic column). ``steps`` overrides ``cfg['training']['steps']`` (tests); the
    learning-rate schedule spans ``steps`` but training stops after ``training.stop_after`` steps
    when that is set (how the shipped weights were made). Batches and
    noise are drawn on the CPU from named generators whatever ``device`` is. ``max_seconds`` stops
    early (the curve then has fewer rows; only for exploratory runs).

    With ``checkpoint`` (a file path) the whole state (weights, EMA, optimiser, the generator, the
    loss curve, and the recipe it belongs to) is saved atomically every ``checkpoint_every`` steps
    and when training stops, and training resumes from it when it exists and holds the same recipe
    (one of another recipe is ignored, with a warning): a run killed and restarted gives the same
    weights as one left alone (same machine and thread count).
    """
    device = torch.device(device)
    tcfg = cfg["training"]
    steps = int(tcfg["steps"] if steps is None else steps)
    stop_after = tcfg.get("stop_after")
    n_run = min(steps, int(stop_after)) if stop_after else steps
    model = model or build_model(cfg)
    model.unet.to(device)
    model.text_encoder.to(device)
    params = list(model.unet.parameters()) + list(model.text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=float(tcfg["learning_rate"]), weight_decay=float(tcfg.get("weight_decay", 0.0)))
    ema_unet = copy.deepcopy(model.unet).requires_grad_(False)
    ema_text = copy.deepcopy(model.text_encoder).requires_grad_(False)
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    decay = float(tcfg["ema_decay"])
    gen = make_generator(cfg["seed"], "t2i/train")
    model.unet.train()
    model.text_encoder.train()
    rows, first, offset = [], 0, 0.0
    recipe = json.dumps(model_config(cfg), sort_keys=True) + f" steps={steps}"
    if checkpoint is not None and Path(checkpoint).exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state.get("recipe") != recipe:
            log.warning("ignoring the checkpoint %s: it belongs to another recipe; training from step 0", checkpoint)
        else:
            for module, key in ((model.unet, "unet"), (model.text_encoder, "text"), (ema_unet, "ema_unet"), (ema_text, "ema_text")):
                module.load_state_dict(state[key])
            opt.load_state_dict(state["opt"])
            gen.set_state(state["gen"])
            rows = [dict(zip(("step", "loss", "lr", "seconds"), (int(r[0]), *map(float, r[1:])))) for r in state["rows"].tolist()]
            first = int(state["step"])
            offset = rows[-1]["seconds"] if rows else 0.0
            log.info("resumed from %s at step %d", checkpoint, first)

    def save_checkpoint(done: int) -> None:
        table = torch.tensor([[r["step"], r["loss"], r["lr"], r["seconds"]] for r in rows], dtype=torch.float64).reshape(-1, 4)
        state = {"unet": model.unet.state_dict(), "text": model.text_encoder.state_dict(), "ema_unet": ema_unet.state_dict(),
                 "ema_text": ema_text.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(), "rows": table,
                 "step": done, "recipe": recipe}
        with atomic_path(checkpoint) as tmp:
            torch.save(state, tmp)

    start = time.perf_counter() - offset
    for step in range(first, n_run):
        lr = lr_at(step, steps, float(tcfg["learning_rate"]), int(tcfg["warmup_steps"]))
        for group in opt.param_groups:
            group["lr"] = lr
        images, prompts = training_batch(model.spec, int(tcfg["batch_size"]), float(tcfg["caption_dropout"]), gen)
        loss = diffusion_loss(model, images, prompts, gen, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_update(ema_params, params, decay, step)
        rows.append({"step": step + 1, "loss": float(loss.detach()), "lr": lr, "seconds": time.perf_counter() - start})
        if log_every and (step + 1) % log_every == 0:
            recent = sum(r["loss"] for r in rows[-log_every:]) / log_every
            log.info("step %d/%d loss %.4f lr %.2e %.1fs", step + 1, steps, recent, lr, rows[-1]["seconds"])
        stop = max_seconds is not None and rows[-1]["seconds"] > max_seconds
        if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == n_run or stop):
            save_checkpoint(step + 1)
        if stop:
            log.warning("stopping after %d steps: max_seconds=%s reached", step + 1, max_seconds)
            break
    ema_unet.to("cpu").eval()
    ema_text.to("cpu").eval()
    trained = T2IModel(ema_unet, ema_text, model.tokenizer, model.scheduler, model.spec)
    return trained, pd.DataFrame(rows)


# --------------------------------------------------------------------------- save / load
def save_model(model: T2IModel, folder: str | Path, cfg: dict) -> None:
    """Write the diffusers folder layout (see module docstring) into ``folder`` (must not exist)."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    model.unet.save_pretrained(folder / "unet", safe_serialization=True)
    model.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    model.tokenizer.save_pretrained(folder / "tokenizer")
    model.scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "ShapesText2Image",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "scheduler": ["diffusers", type(model.scheduler).__name__],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (folder / "t2i_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def load_model(folder: str | Path, device: str | torch.device = "cpu") -> T2IModel:
    """Load a folder written by :func:`save_model` (safetensors, no remote code)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    from diffusion_report.models.loading import load_pretrained

    folder = Path(folder)
    cfg = json.loads((folder / "t2i_config.json").read_text())
    unet = load_pretrained(UNet2DConditionModel, folder, config_key="t2i.pretrained", subfolder="unet").to(device).eval()
    text = load_pretrained(CLIPTextModel, folder, config_key="t2i.pretrained", subfolder="text_encoder").to(device).eval()
    tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    sched = DDPMScheduler.from_pretrained(folder / "scheduler")
    return T2IModel(unet, text, tok, sched, shapes.ShapeSpec.from_config(cfg["data"]))


# --------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample(model: T2IModel, prompts: list[str], x_T: torch.Tensor, num_steps: int, guidance_scale: float) -> torch.Tensor:
    """Deterministic DDIM (eta 0) with classifier-free guidance. x_T (B,3,H,W) -> images (B,3,H,W) in [-1,1].

    A reference sampler independent of the prompt-to-prompt module (used for the sample grid and
    the model's attribute accuracy); a clipped x_0 steps as in :func:`text2image.step_options`.
    """
    from diffusers import DDIMScheduler

    from diffusion_report.models.text2image import step_options

    sched = DDIMScheduler.from_config(model.scheduler.config)
    sched.set_timesteps(int(num_steps))
    cond = model.encode(list(prompts))
    uncond = model.encode([""] * len(prompts))
    x = x_T.clone()
    step = step_options(sched)
    for t in sched.timesteps:
        inp = torch.cat([x, x])
        eps = model.unet(inp, t, encoder_hidden_states=torch.cat([uncond, cond])).sample
        e_u, e_c = eps.chunk(2)
        eps = e_u + guidance_scale * (e_c - e_u)
        x = sched.step(eps, t, x, **step).prev_sample
    return x.clamp(-1, 1)


def initial_noise(spec: shapes.ShapeSpec, n: int, seed: int, name: str) -> torch.Tensor:
    """x_T for ``n`` images: (n, 3, H, W) standard normal from a named generator."""
    g = make_generator(seed, name)
    return torch.randn((n, 3, spec.image_size, spec.image_size), generator=g)


# --------------------------------------------------------------------------- rule t2i_train
WEIGHT_FILES = T2I_WEIGHT_FILES


def block_config(t2i_cfg: dict, seed: int) -> dict:
    """The ``t2i`` config block plus the master seed: what :func:`build_model`/:func:`train` take."""
    cfg = copy.deepcopy(dict(t2i_cfg))
    cfg["seed"] = int(seed)
    return cfg


def model_config(cfg: dict) -> dict:
    """The keys that determine the trained weights (saved with them and compared on use)."""
    out = {k: copy.deepcopy(cfg[k]) for k in ("seed", "data", "model", "schedule", "training")}
    out["training"].pop("device", None)  # where it ran does not name the recipe
    out["training"].setdefault("stop_after", None)
    if not float(out["data"].get("two_objects", 0.0)):  # one object per image: the pair keys draw nothing
        out["data"].pop("two_objects", None)
        out["data"].pop("pair_radius", None)
    if float(out["data"].get("colour_word_prob", 1.0)) == 1.0:  # every caption names the colour: nothing drawn
        out["data"].pop("colour_word_prob", None)
    return out


def sha256_table(folder: str | Path) -> dict[str, str]:
    """{relative path: sha256} of :data:`WEIGHT_FILES` under ``folder``."""
    from diffusion_report.io import sha256_table as table

    return table(folder, WEIGHT_FILES)


def verify_weights(folder: str | Path) -> None:
    """Check ``folder/SHA256SUMS`` against the files; raise with what to do on a mismatch."""
    from diffusion_report.io import verify_sha256sums

    verify_sha256sums(folder, WEIGHT_FILES, "t2i.weights", "set t2i.train: true to train the model here")
