"""Names the DDIM rules share with the package (no torch: the rules import this to build the DAG):
the files of a shipped digits-DDPM folder and the quality table's cells.

A cell is a sampler variant at a step count S. Variants are ``eta=<value>`` (DDIM eq. 12 with the
sigma of eq. 16; ``eta=0`` is deterministic DDIM) and ``sigma_hat`` (DDPM's larger variance
sigma-hat^2 = 1 - abar_t / abar_{t'} on the strided timesteps, the last row of DDIM's Table 1).
"""

from __future__ import annotations

# The files of a digits-DDPM folder made by rule ddim_train (``ddim.weights``), relative to it;
# SHA256SUMS beside them lists them all.
WEIGHT_FILES = (
    "model/config.json",
    "model/diffusion_pytorch_model.safetensors",
    "model/scheduler_config.json",
    "model/ddim_config.json",
    "loss.csv",
)


def variant_label(eta) -> str:
    """``eta=0``, ``eta=0.2`` (shortest float form), or ``sigma_hat``."""
    if eta == "sigma_hat":
        return "sigma_hat"
    return f"eta={float(eta):g}"


def quality_variants(etas, sigma_hat: bool) -> list[str]:
    """The table's variants in row order: the eta values as given, then sigma-hat."""
    return [variant_label(e) for e in etas] + (["sigma_hat"] if sigma_hat else [])


def reused_variant(sampling: dict, steps: int, step_counts) -> str | None:
    """The variant that rule ``ddim_sample`` already made at ``steps`` (the stage's own eta, when
    ``steps`` is one of ``ddim.step_counts``), so the quality table reuses it; else None."""
    return variant_label(sampling["eta"]) if int(steps) in {int(s) for s in step_counts} else None
