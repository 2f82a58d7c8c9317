"""Config validation and input functions shared by every stage's rules."""

import glob
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "scripts"))

from diffusion_report.config import ConfigError, validate_config  # noqa: E402

try:
    validate_config(config, Path(workflow.basedir) / "schemas" / "config.schema.yaml", base_dir=Path.cwd())
except ConfigError as exc:
    # One "config error: ..." line per problem on stderr and exit 1, before any job: a WorkflowError
    # raised here would add a traceback line pointing into this file.
    print("\n".join(line.strip() for line in str(exc).splitlines()[1:]), file=sys.stderr)
    sys.exit(1)


# What the report shows, {stage: {name: path}}, filled in by each stage's .smk file.
REPORT_INPUTS = {}


def get_report_inputs(wildcards):
    """Every registered artifact, flattened to {"<stage>__<name>": path} for the report rule."""
    return {f"{stage}__{name}": path for stage, files in REPORT_INPUTS.items() for name, path in files.items()}


def get_final_outputs(wildcards):
    """The report files asked for in config (report.formats)."""
    return [f"results/report/report.{fmt}" for fmt in config["report"]["formats"]]


# ---- DDIM stage (rules/ddim.smk); the names they read (DDIM, DDIM_SAMPLING, DDIM_QUALITY) are set there.
def get_ddim_train_input(wildcards):
    """The shipped weights (their edits rerun the rule); nothing when the model is trained here."""
    return [] if DDIM["retrain"] else [f"{DDIM['weights']}/{f}" for f in DDIM_WEIGHT_FILES]


def get_quality_variants(steps):
    """The Table 1 variants rule ddim_quality_samples draws at ``steps`` (minus the one ddim_sample made)."""
    reused = reused_variant(DDIM_SAMPLING, int(steps), DDIM["step_counts"])
    return [v for v in quality_variants(DDIM_QUALITY["etas"], DDIM_QUALITY["sigma_hat"]) if v != reused]


def get_quality_inputs(wildcards):
    """{q_<S>: quality samples, r_<S>: ddim_sample's samples reused for the cell it already made}."""
    out = {}
    for s in DDIM_QUALITY["step_counts"]:
        out[f"q_{s}"] = f"results/ddim/quality/samples_{s}.safetensors"
        if reused_variant(DDIM_SAMPLING, s, DDIM["step_counts"]):
            out[f"r_{s}"] = f"results/ddim/samples/ddim_{s}.safetensors"
    return out
