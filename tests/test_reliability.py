"""Faults lose nothing: atomic writes, clear errors for unwritable or full disks, safe loading."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from conftest import ROOT, copy_workflow, run_snakemake

from diffusion_report.io import atomic_path, save_png, write_text


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "table.csv"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half a table")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_atomic_path_replaces_folders_whole(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]


def test_written_files_are_world_readable_like_normal_files(tmp_path):
    write_text(tmp_path / "a.txt", "x")
    save_png(tmp_path / "a.png", __import__("numpy").zeros((2, 2, 3), "uint8"))
    umask = os.umask(0)
    os.umask(umask)
    for name in ("a.txt", "a.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_results_that_is_not_a_folder_is_a_config_error(tmp_path):
    work = copy_workflow(tmp_path / "wf")
    (work / "results").write_text("not a folder")
    proc = run_snakemake(work, "--configfile", "presets/tiny.yaml", timeout=300)
    assert proc.returncode != 0
    assert "config error: results/:" in proc.stdout + proc.stderr
    assert not (work / "logs").exists()


@pytest.mark.slow
def test_full_disk_gives_a_clear_error_and_no_finished_looking_output(tmp_path):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a tiny tmpfs")
    work = copy_workflow(tmp_path / "wf")
    results = work / "results"
    results.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(results)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        proc = run_snakemake(work, "forward_clean", "--configfile", "presets/tiny.yaml", timeout=300)
        out = proc.stdout + proc.stderr
        logs = "".join(p.read_text() for p in (work / "logs").rglob("*.log"))
        assert proc.returncode != 0
        assert "cannot write the results" in logs and "No space left on device" in logs
        leftovers = [p.name for p in results.rglob("*") if p.is_file()]
        assert "x0.safetensors" not in leftovers and "clean.png" not in leftovers, (leftovers, out[-2000:])
    finally:
        subprocess.run(["umount", "-l", str(results)], check=False)


def test_no_unsafe_loading_in_the_package():
    """torch.load only with weights_only=True; trust_remote_code never enabled; no pickle/eval."""
    sources = list((ROOT / "scripts").rglob("*.py"))
    assert sources
    for path in sources:
        text = path.read_text()
        for call in re.findall(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call, f"{path.name}: torch.load({call}) without weights_only=True"
        assert not re.search(r"trust_remote_code\s*=\s*True", text), f"{path.name} sets trust_remote_code=True"
        assert not re.search(r"^\s*import pickle|pickle\.loads?\(|(?<![.\w])eval\(", text, re.M), f"{path.name} uses pickle/eval"


def test_stale_temporaries_of_a_killed_attempt_are_removed(tmp_path):
    target = tmp_path / "grid.png"
    stale = tmp_path / ".grid.png.abc123.part.png"
    stale.write_bytes(b"half")
    unrelated = tmp_path / ".other.png.abc.part.png"
    unrelated.write_bytes(b"x")
    write_text(target, "done")
    assert not stale.exists() and unrelated.exists() and target.read_text() == "done"
