"""Shared fixtures: the repository root, a tiny workflow config, and a runner for snakemake."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from diffusion_report.testing import (  # noqa: F401 (for the tests)
    ROOT,
    SNAKEMAKE,
    copy_workflow,
    job_stats,
    run_snakemake,
)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def load_yaml(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())


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
