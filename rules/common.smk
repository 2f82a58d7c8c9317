"""Config validation and input functions shared by every stage's rules."""

import glob
import sys
from pathlib import Path

# The workflow's own folder (Snakefile, scripts/, models/, report/): not the working directory when
# snakemake runs with -d elsewhere, nor workflow.basedir when this workflow is used as a module.
WORKFLOW_DIR = Path(workflow.current_basedir).parent

# The Snakemake process itself imports the package (config checks, the DAG's names): it finds it
# here whether or not it is pip-installed, as a module of another workflow too. Rule scripts get
# scripts/ on their path from Snakemake.
sys.path.insert(0, str(WORKFLOW_DIR / "scripts"))

from diffusion_report.config import (
    ConfigError,
    validate_config,
    workflow_path,
)


def workflow_file(path):
    """A file shipped with the workflow (report/theory.tex, report/style.css, ...), relative when the
    working directory is the workflow's folder, else absolute."""
    here = Path(path)
    return (
        path
        if here.resolve() == (WORKFLOW_DIR / path).resolve()
        else str(WORKFLOW_DIR / path)
    )


try:
    validate_config(
        config,
        WORKFLOW_DIR / "schemas" / "config.schema.yaml",
        base_dir=Path.cwd(),
        workflow_dir=WORKFLOW_DIR,
    )
except ConfigError as exc:
    # One "config error: ..." line per problem on stderr and exit 1, before any job: a WorkflowError
    # raised here would add a traceback line pointing into this file.
    print(
        "\n".join(line.strip() for line in str(exc).splitlines()[1:]), file=sys.stderr
    )
    sys.exit(1)


# What the report shows, {stage: {name: path}}, filled in by each stage's .smk file.
REPORT_INPUTS = {}


def get_report_inputs(wildcards):
    """Every registered artifact, flattened to {"<stage>__<name>": path} for the report rule."""
    return {
        f"{stage}__{name}": path
        for stage, files in REPORT_INPUTS.items()
        for name, path in files.items()
    }


def get_final_outputs(wildcards):
    """The report files asked for in config (report.formats)."""
    return [f"results/report/report.{fmt}" for fmt in config["report"]["formats"]]


# ---- DDIM stage (rules/ddim.smk); the names they read (DDIM, DDIM_SAMPLING, DDIM_QUALITY) are set there.
def get_ddim_model(wildcards, input):
    """What a DDIM job samples from: its ``model`` input (trained here), else the pretrained hub id or folder."""
    return input.model[0] if input.model else DDIM["model"]["pretrained"]


def shipped_weights(folder, files):
    """{sums: <folder>/SHA256SUMS, files: [...]}: a shipped model folder as inputs (edits to its files
    rerun the rule), found in the working directory or else in the workflow's own folder.
    """
    folder = workflow_path(folder, Path.cwd(), WORKFLOW_DIR)
    return {"sums": f"{folder}/SHA256SUMS", "files": [f"{folder}/{f}" for f in files]}


def get_ddim_train_input(wildcards):
    """The shipped weights; nothing when the model is trained here (ddim.retrain)."""
    return (
        {} if DDIM["retrain"] else shipped_weights(DDIM["weights"], DDIM_WEIGHT_FILES)
    )


def get_reused_cells(steps):
    """{variant: sample label} of the cells at ``steps`` that ddim_sample / ddim_ddpm_baseline made."""
    return reused_cells(
        DDIM_SAMPLING,
        int(steps),
        DDIM["step_counts"],
        quality_variants(DDIM_QUALITY["etas"], DDIM_QUALITY["sigma_hat"]),
        ddpm_baseline=DDIM["ddpm_baseline"],
        T=config["schedule"]["T"],
    )


def get_quality_variants(steps):
    """The Table 1 variants rule ddim_quality_samples draws at ``steps`` (minus those other rules made)."""
    reused = get_reused_cells(steps)
    return [
        v
        for v in quality_variants(DDIM_QUALITY["etas"], DDIM_QUALITY["sigma_hat"])
        if v not in reused
    ]


def get_quality_inputs(wildcards):
    """{q_<S>: quality samples, r_<S>_<label>: samples of ddim_sample / ddim_ddpm_baseline reused as cells}."""
    out = {}
    for s in DDIM_QUALITY["step_counts"]:
        if get_quality_variants(s):
            out[f"q_{s}"] = f"results/ddim/quality/samples_{s}.safetensors"
        for label in get_reused_cells(s).values():
            out[f"r_{s}_{label}"] = f"results/ddim/samples/{label}.safetensors"
    return out


def get_reused_variants():
    """{input key r_<S>_<label>: variant} for rule ddim_quality."""
    return {
        f"r_{s}_{label}": variant
        for s in DDIM_QUALITY["step_counts"]
        for variant, label in get_reused_cells(s).items()
    }


# ---- prompt-to-prompt stage (rules/p2p.smk); P2P_REAL is set there.
def get_real_image(wildcards):
    """The file a p2p.real_edits image resolves to (an input: replacing it reruns the job); none when drawn."""
    from diffusion_report.images import resolve_image

    image = P2P_REAL[wildcards.name]["image"]
    return {"image": str(resolve_image(image))} if isinstance(image, str) else {}
