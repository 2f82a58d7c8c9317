"""The files of the shipped model folders, relative to the folder (no torch: the rules read these
lists to declare the folders' files as inputs). Each folder's SHA256SUMS lists them all.
"""

from __future__ import annotations

# A digits-DDPM folder made by rule ddim_train (``ddim.weights``).
DDIM_WEIGHT_FILES = (
    "model/config.json",
    "model/diffusion_pytorch_model.safetensors",
    "model/scheduler_config.json",
    "model/ddim_config.json",
    "loss.csv",
)

# A shapes text-to-image folder made by rule t2i_train (``t2i.weights``), in the diffusers layout.
T2I_WEIGHT_FILES = (
    "model/model_index.json",
    "model/t2i_config.json",
    "model/unet/config.json",
    "model/unet/diffusion_pytorch_model.safetensors",
    "model/text_encoder/config.json",
    "model/text_encoder/model.safetensors",
    "model/tokenizer/tokenizer.json",
    "model/tokenizer/tokenizer_config.json",
    "model/scheduler/scheduler_config.json",
    "loss.csv",
)
