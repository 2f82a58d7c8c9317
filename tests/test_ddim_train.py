"""DDIM stage: the digits DDPM trainer, its saved model folder and the recognisability classifier."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from diffusion_report.core.schedules import Schedule, make_betas
from diffusion_report.models import ddpm, digits, training
from diffusion_report.models.files import DDIM_WEIGHT_FILES as WEIGHT_FILES
from diffusion_report.stages import ddim as ddim_stage


def tiny_config(tmp_steps: int = 4) -> dict:
    return {
        "seed": 5,
        "schedule": {"kind": "linear", "T": 100, "beta_start": 1e-4, "beta_end": 0.02},
        "ddim": {"train": {"image_size": 8, "channels": [8, 16], "steps": tmp_steps, "batch_size": 16,
                           "learning_rate": 2e-3, "ema_decay": 0.9}, "retrain": True, "weights": "unused"},
    }


def fixed_batch_loss(unet, x0, schedule, seed=0):
    with torch.no_grad():
        return float(training.simple_loss(unet, x0, schedule, torch.Generator().manual_seed(seed)))


def test_trainer_reduces_loss_and_is_deterministic():
    schedule = Schedule.make("linear", 100)
    data, _ = digits.digits_split(8, seed=0)["ddpm"]
    data = data[:64]
    cfg = ddpm.unet_config(8, [8, 16])
    init = ddpm.build_unet(cfg, seed=1)
    kw = dict(steps=40, batch_size=16, learning_rate=3e-3, ema_decay=0.9, seed=1, log_every=0)
    ema, losses = training.train_ddpm(data, schedule, cfg, **kw)
    before = fixed_batch_loss(init, data[:32], schedule)
    after = fixed_batch_loss(ema, data[:32], schedule)
    assert after < 0.7 * before, (before, after)
    assert sum(losses[-10:]) < sum(losses[:10])
    short = {**kw, "steps": 5}
    ema1, losses1 = training.train_ddpm(data, schedule, cfg, **short)
    ema2, losses2 = training.train_ddpm(data, schedule, cfg, **short)
    assert losses1 == losses2 and losses1[0] == losses[0]  # same seed -> same init, batches, noise
    assert all(torch.equal(a, b) for a, b in zip(ema1.state_dict().values(), ema2.state_dict().values()))


def test_unet_config_is_small_and_validated():
    from diffusers import UNet2DModel

    n = sum(p.numel() for p in UNet2DModel(**ddpm.unet_config(16, [32, 64, 64])).parameters())
    assert 0.5e6 < n < 2e6  # the "~1M-parameter UNet" of the default config
    with pytest.raises(ValueError, match="ddim.train.image_size"):
        ddpm.unet_config(10, [8, 16, 32])


@pytest.mark.parametrize("kind", ["linear", "quadratic", "cosine", "sigmoid"])
def test_saved_scheduler_has_the_configured_betas(kind):
    sched = ddpm.ddpm_scheduler({"kind": kind, "T": 1000, "beta_start": 1e-4, "beta_end": 0.02})
    assert isinstance(sched, DDPMScheduler) and sched.config.clip_sample is False
    torch.testing.assert_close(sched.betas.double(), make_betas(kind, 1000), rtol=1e-5, atol=1e-7)


def test_run_training_writes_a_loadable_model(tmp_path):
    cfg = tiny_config(tmp_steps=3)
    model_dir = tmp_path / "model"
    ddim_stage.ddim_train(model_dir, tmp_path / "loss.csv", tmp_path / "loss.png", cfg)
    assert (model_dir / "diffusion_pytorch_model.safetensors").exists()
    assert not list(model_dir.glob("*.bin"))  # safetensors only
    assert (tmp_path / "loss.png").stat().st_size > 0
    unet, schedule, pred = ddpm.load_model(str(model_dir))
    assert pred == "epsilon" and schedule.T == 100 and unet.config.sample_size == 8
    torch.testing.assert_close(schedule.alpha_bars, Schedule.from_config(cfg["schedule"]).alpha_bars, rtol=1e-5, atol=1e-7)
    import pandas as pd

    loss = pd.read_csv(tmp_path / "loss.csv")
    assert list(loss["step"]) == [1, 2, 3] and (loss["loss"] > 0).all()


def test_digits_split_is_disjoint_and_seeded():
    idx = digits.split_indices(1797, seed=0)
    sets = [set(v.tolist()) for v in idx.values()]
    assert sum(len(s) for s in sets) == 1797 and len(set.union(*sets)) == 1797
    assert torch.equal(idx["clf"], digits.split_indices(1797, seed=0)["clf"])
    assert not torch.equal(idx["clf"], digits.split_indices(1797, seed=1)["clf"])
    x, _ = digits.digits_split(16, seed=0)["ddpm"]
    assert x.shape[1:] == (1, 16, 16) and x.min() >= -1 and x.max() <= 1


def test_recognisability_classifier_is_accurate_on_held_out_digits():
    clf = digits.train_classifier(16, seed=0)
    assert clf.test_accuracy >= 0.9
    real = digits.digits_split(16, seed=0)["test"][0]
    noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    assert clf.recognisability(real)["recognisability"] > clf.recognisability(noise)["recognisability"] + 0.2


def test_checkpoint_resume_gives_the_same_weights(tmp_path):
    """A run stopped after k steps and resumed from its checkpoint equals an uninterrupted run."""
    schedule = Schedule.make("linear", 100)
    data = digits.digits_split(8, seed=0)["ddpm"][0][:64]
    cfg = ddpm.unet_config(8, [8, 16])
    kw = dict(batch_size=8, learning_rate=3e-3, ema_decay=0.9, seed=2, log_every=0)
    full, losses = training.train_ddpm(data, schedule, cfg, steps=6, **kw)
    ck = tmp_path / "ck.pt"
    # a first run that checkpoints at step 3 and is "killed" there: simulate by a 3-step run with the
    # same schedule length, whose checkpoint then resumes
    training.train_ddpm(data, schedule, cfg, steps=6, checkpoint=ck, checkpoint_every=3, **{**kw, "log_every": 0},
                        _stop_after=3)
    state = torch.load(ck, weights_only=True)
    assert int(state["step"]) == 3
    resumed, losses2 = training.train_ddpm(data, schedule, cfg, steps=6, checkpoint=ck, checkpoint_every=3, **kw)
    assert losses2 == losses
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def _shipped_folder(tmp_path, cfg):
    """Weights made by ddim_train, packaged the way models/ddim-digits is (model/, loss.csv, SHA256SUMS)."""
    from diffusion_report.io import sha256_table

    w = tmp_path / "w"
    ddim_stage.ddim_train(w / "model", w / "loss.csv", tmp_path / "made.png", cfg)
    sums = sha256_table(w, WEIGHT_FILES)
    (w / "SHA256SUMS").write_text("".join(f"{h}  {p}\n" for p, h in sums.items()))
    return w


def test_shipped_weights_are_verified_and_installed(tmp_path):
    import copy
    import json

    cfg = tiny_config(tmp_steps=2)
    w = _shipped_folder(tmp_path, cfg)
    use = copy.deepcopy(cfg)
    use["ddim"].update(retrain=False, weights=str(w))
    src = ddim_stage.ddim_train(tmp_path / "m", tmp_path / "l.csv", tmp_path / "l.png", use)
    assert src.startswith("shipped weights") and "sha256" in src
    assert (tmp_path / "m" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        w / "model" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert json.loads((tmp_path / "m" / "ddim_config.json").read_text()) == ddim_stage.recipe(cfg)
    # another recipe: a clear error naming the key that differs
    other = copy.deepcopy(use)
    other["ddim"]["train"]["learning_rate"] = 1e-3
    with pytest.raises(ValueError, match=r"ddim.weights: .*another recipe.*train"):
        ddim_stage.ddim_train(tmp_path / "m2", tmp_path / "l2.csv", tmp_path / "l2.png", other)
    # a changed byte: checksum mismatch naming the file
    with open(w / "loss.csv", "a") as fh:
        fh.write("99,0.1,0.1\n")
    with pytest.raises(ValueError, match="checksum mismatch.*loss.csv"):
        ddim_stage.ddim_train(tmp_path / "m3", tmp_path / "l3.csv", tmp_path / "l3.png", use)


def test_reader_features_are_its_penultimate_layer():
    """The Frechet features are the MLP's last hidden layer: pushing them through the output layer
    and a softmax gives the reader's own probabilities."""
    import numpy as np

    clf = digits.train_classifier(16, seed=0)
    x = digits.digits_split(16, seed=0)["test"][0][:20]
    h = clf.features(x)
    assert h.shape == (20, digits.HIDDEN[-1]) and (h >= 0).all()
    logits = h @ clf.model.coefs_[-1] + clf.model.intercepts_[-1]
    p = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(p / p.sum(1, keepdims=True), clf.predict_proba(x), rtol=1e-6, atol=1e-9)
    # the reader is confident on real held-out digits, and not on noise
    assert clf.recognisability(digits.digits_split(16, seed=0)["test"][0])["confident_fraction"] >= 0.9
    noise = torch.randn((200, 1, 16, 16), generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    assert clf.recognisability(noise)["confident_fraction"] < 0.2
