"""`make report` clears a stale Snakemake lock (left by kill -9 / SIGHUP) and never a live run's."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SNAKEMAKE, copy_workflow

from diffusion_report import lock


def fake_locks(workdir: Path) -> list[Path]:
    """What a hard-killed snakemake leaves behind."""
    folder = workdir / ".snakemake" / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / "0.input.lock", folder / "0.output.lock"]
    files[0].write_text(str(workdir / "config.yaml") + "\n")
    files[1].write_text(str(workdir / "results" / "report" / "report.html") + "\n")
    return files


def fake_snakemake(tmp: Path) -> Path:
    """An executable standing in for snakemake: records its arguments, removes the locks like --unlock."""
    exe = tmp / "bin" / "fake-unlock"
    exe.parent.mkdir(exist_ok=True)
    exe.write_text(
        f"#!{sys.executable}\n"
        "import shutil, sys\n"
        "open('unlock-args.txt', 'w').write(' '.join(sys.argv[1:]))\n"
        "shutil.rmtree('.snakemake/locks')\n"
    )
    exe.chmod(0o755)
    return exe


def sleeper(cwd: Path, *extra: str) -> subprocess.Popen:
    """A harmless process whose command line mentions snakemake, working in ``cwd``."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "snakemake", *extra], cwd=cwd)


def test_no_lock_nothing_to_do(tmp_path):
    (tmp_path / ".snakemake" / "locks").mkdir(parents=True)  # snakemake creates the folder empty
    out = io.StringIO()
    assert lock.clear_stale_lock(tmp_path, [str(fake_snakemake(tmp_path))], out=out) == 0
    assert out.getvalue() == "" and not (tmp_path / "unlock-args.txt").exists()


def test_stale_lock_is_reported_and_unlocked(tmp_path):
    files = fake_locks(tmp_path)
    out = io.StringIO()
    rc = lock.clear_stale_lock(tmp_path, [str(fake_snakemake(tmp_path)), "--cores", "2"], out=out)
    assert rc == 0
    assert lock.STALE_MESSAGE in out.getvalue() and "2 lock file(s)" in out.getvalue()
    assert (tmp_path / "unlock-args.txt").read_text() == "--cores 2 --unlock"
    assert not any(f.exists() for f in files)


@pytest.mark.parametrize("where", ["cwd", "--directory"])
def test_live_run_is_named_and_not_unlocked(tmp_path, where):
    files = fake_locks(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = sleeper(tmp_path) if where == "cwd" else sleeper(elsewhere, "--directory", "..")
    try:
        assert [pid for pid, _ in lock.live_snakemake(tmp_path)] == [proc.pid]
        out = io.StringIO()
        rc = lock.clear_stale_lock(tmp_path, [str(fake_snakemake(tmp_path))], out=out)
    finally:
        proc.kill()
        proc.wait()
    text = out.getvalue()
    assert rc == 1
    assert f"pid {proc.pid}: " in text and "time.sleep(30) snakemake" in text and "not unlocking" in text
    assert lock.STALE_MESSAGE not in text
    assert all(f.exists() for f in files) and not (tmp_path / "unlock-args.txt").exists()
    # once it has ended, the same lock is stale
    assert lock.live_snakemake(tmp_path) == []
    assert lock.clear_stale_lock(tmp_path, [str(fake_snakemake(tmp_path))], out=io.StringIO()) == 0
    assert not any(f.exists() for f in files)


def test_a_snakemake_in_another_folder_does_not_count(tmp_path):
    files = fake_locks(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    proc = sleeper(other)
    try:
        assert lock.clear_stale_lock(tmp_path, [str(fake_snakemake(tmp_path))], out=io.StringIO()) == 0
    finally:
        proc.kill()
        proc.wait()
    assert not any(f.exists() for f in files)


def test_the_calling_shell_does_not_count(tmp_path):
    """make runs the helper in `sh -c '... snakemake ...'` in the workflow folder: its own ancestor."""
    files = fake_locks(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "scripts"))
    cmd = f"{sys.executable} -m diffusion_report.lock --snakemake {fake_snakemake(tmp_path)}; status=$?; echo snakemake; exit $status"
    proc = subprocess.run(["sh", "-c", cmd], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lock.STALE_MESSAGE in proc.stdout
    assert not any(f.exists() for f in files)


def test_real_snakemake_unlock_through_the_module_entry(tmp_path):
    """The command `make report` runs, with the real snakemake, on a copy of the workflow."""
    work = copy_workflow(tmp_path / "wf")
    files = fake_locks(work)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "scripts"), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "diffusion_report.lock", "--snakemake", SNAKEMAKE, "--", "--cores", "2"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert lock.STALE_MESSAGE in proc.stdout and "Unlocked working directory" in proc.stdout + proc.stderr
    assert not any(f.exists() for f in files)


def test_make_report_runs_the_helper_before_snakemake():
    recipe = (ROOT / "Makefile").read_text().split("\nreport:", 1)[1].split("\n\n", 1)[0]
    helper = recipe.index("-m diffusion_report.lock")
    assert helper < recipe.index("$(BIN)/snakemake $(SNAKEMAKE_ARGS)\n")
