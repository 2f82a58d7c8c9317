"""Names the DDIM rules share with the package (no torch: the rules import this to build the DAG):
the quality table's cells.

A cell is a sampler variant at a step count S. Variants are ``eta=<value>`` (DDIM eq. 12 with the
sigma of eq. 16; ``eta=0`` is deterministic DDIM) and ``sigma_hat`` (DDPM's larger variance
sigma-hat^2 = 1 - abar_t / abar_{t'} on the strided timesteps, the last row of DDIM's Table 1).

Also the DDIM paper's own numbers and the thresholds of the report's claims: the report layer
reads them from here without importing torch.
"""

from __future__ import annotations


def variant_label(eta) -> str:
    """``eta=0``, ``eta=0.2`` (shortest float form), or ``sigma_hat``."""
    if eta == "sigma_hat":
        return "sigma_hat"
    return f"eta={float(eta):g}"


def quality_variants(etas, sigma_hat: bool) -> list[str]:
    """The table's variants in row order: the eta values as given, then sigma-hat."""
    return [variant_label(e) for e in etas] + (["sigma_hat"] if sigma_hat else [])


def reused_cells(sampling: dict, steps: int, step_counts, variants, *, ddpm_baseline: bool = False,
                 T: int | None = None) -> dict[str, str]:
    """The cells at ``steps`` that other rules already drew, so the quality table reuses them:
    {variant: sample label of results/ddim/samples/<label>.safetensors}.

    * rule ``ddim_sample`` made the stage's own eta at each S of ``ddim.step_counts``;
    * rule ``ddim_ddpm_baseline`` is DDIM's eta = 1 at S = T with uniform steps: with consecutive
      timesteps, eq. 16's sigma at eta = 1 is the posterior variance beta-tilde that the baseline
      uses (same update, same clipping, and the same noise: the stage's one Brownian path, whose
      increments at S = T are the baseline's draws).
    """
    out = {}
    steps = int(steps)
    own = variant_label(sampling["eta"])
    if steps in {int(s) for s in step_counts} and own in variants:
        out[own] = f"ddim_{steps}"
    if ddpm_baseline and T is not None and steps == int(T) and sampling["skip_type"] == "uniform" and "eta=1" in variants and "eta=1" not in out:
        out["eta=1"] = "ddpm"
    return out


# The paper's CIFAR-10 FIDs (Table 1, S = 10, 20, 50, 100, 1000) and reconstruction MSEs (Table 2).
PAPER_STEPS = (10, 20, 50, 100, 1000)


PAPER_FID = {
    "eta=0": (13.36, 6.84, 4.67, 4.16, 4.04),
    "eta=0.2": (14.04, 7.11, 4.77, 4.25, 4.09),
    "eta=0.5": (16.66, 8.35, 5.25, 4.46, 4.29),
    "eta=1": (41.07, 18.36, 8.01, 5.78, 4.73),
    "sigma_hat": (367.43, 133.37, 32.72, 9.99, 3.17),
}


PAPER_RECON_STEPS = (10, 20, 50, 100, 200, 500, 1000)


PAPER_RECON_MSE = (0.014, 0.0065, 0.0023, 0.0009, 0.0004, 0.0001, 0.0001)


# Thresholds of the report's claims, stated next to the functions that use them.
CONFIDENT_GOAL = 0.9  # the goal: >= 90% of DDIM samples confidently classified at S >= 20


RECOG_GAP = 0.03  # DDIM recognisability within this of the 1000-step DDPM's


PIXEL_BOUND = 1.2  # no sample pixel outside [-1.2, 1.2] before display clamping


RECON_FAIL_MSE = 0.01  # a round trip with a per-pixel MSE above this (PSNR < 20 dB) counts as failed
