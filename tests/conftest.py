"""Shared fixtures: the repository root, a tiny workflow config, and a runner for snakemake."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
WORKFLOW_FILES = ("Snakefile", "config.yaml", "rules", "scripts", "schemas", "report", "envs", "profiles", "presets", "models")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def load_yaml(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow (no results, no .snakemake) in ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def run_snakemake(workdir: Path, *args: str, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run snakemake in ``workdir`` and return the finished process (stdout and stderr merged)."""
    full_env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONHASHSEED="0")
    full_env.update(env or {})
    return subprocess.run(
        [SNAKEMAKE, "--cores", "2", *args],
        cwd=workdir, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


def job_stats(out: str) -> dict[str, int]:
    """rule -> job count from the "Job stats" table Snakemake prints ({} when nothing is to be done)."""
    if "Job stats:" not in out:
        return {}
    jobs = {}
    for line in out[out.index("Job stats:"):].split("\n\n")[0].splitlines()[3:]:
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            jobs[parts[0]] = int(parts[1])
    return jobs


def write_config(path: Path, overrides: dict) -> Path:
    path.write_text(yaml.safe_dump(overrides, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One uninterrupted run of the whole workflow on presets/tiny.yaml: (workdir, process).

    Shared by the end-to-end tests, the determinism test (its run A) and the benchmark smoke test;
    they only read it or dry-run against it, so its results stay those of the run.
    """
    work = copy_workflow(tmp_path_factory.mktemp("wf"))
    proc = run_snakemake(work, "--configfile", "presets/tiny.yaml", timeout=1500)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return work, proc
