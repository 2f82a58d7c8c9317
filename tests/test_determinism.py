"""Two clean runs in different folders give the same bytes, also when one job is killed with -9.

Run A is uninterrupted, in a copy of the workflow. Run B runs from another copy into an empty
folder (``snakemake -s <copy>/Snakefile -d <folder>``: config, models and report sources are found
beside the Snakefile); it is killed (SIGKILL to the longest job's process) part-way, then rerun; Snakemake's incomplete markers and the scripts' atomic writes mean the rerun redoes the
killed job and the final artifacts equal run A's. The only difference allowed is the report's
values marked as measured (wall times, speed-ups and memory, in the report and in
results/ddim/timing*), which are blanked before comparing.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import SNAKEMAKE, copy_workflow, run_snakemake

from diffusion_report.testing import TEST_RUN_ARGS

pytestmark = pytest.mark.slow

# The job to kill: the first of these that the tiny preset runs (longest first).
KILL_PREFERENCE = ("ddim_train.py", "ddim_sample.py", "t2i_eval.py", "forward_mse.py")
COMPARED_SUFFIXES = {".png", ".csv", ".html", ".pdf", ".json", ".safetensors", ".txt"}


def digests(results: Path) -> dict[str, str]:
    out = {}
    for path in sorted(results.rglob("*")):
        measured = "timing" in path.parts or path.name.startswith("timing")  # wall times by design
        if path.is_file() and path.suffix in COMPARED_SUFFIXES and path.name != "screenshot.png" and not measured:
            data = path.read_bytes()
            if path.suffix == ".html":
                data = strip_measurements(data.decode()).encode()
            elif path.name == "report.pdf":
                continue  # the PDF prints the measured times too; its HTML source is compared instead
            out[str(path.relative_to(results))] = hashlib.sha256(data).hexdigest()
    return out


def strip_measurements(html: str) -> str:
    """Blank the values the report marks as measured (wall times, speed-ups, memory)."""
    html = re.sub(r'<span class="measured">[^<]*</span>', '<span class="measured"></span>', html)
    return re.sub(r'<td class="(num |breakable )?measured">(?:[^<]|<wbr>)*</td>', '<td class="measured"></td>', html)


def scripts_running(pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split() if int(p) != os.getpid()]


@pytest.fixture(scope="module")
def two_runs(tiny_run, tmp_path_factory):
    """Run A in the workflow's folder; run B with ``-s <workflow>/Snakefile -d <empty folder>``
    (the workflow's own files found beside its Snakefile), killed mid-job, then rerun."""
    a, proc = tiny_run  # run A: the shared uninterrupted run
    base = tmp_path_factory.mktemp("run_b")
    wf = copy_workflow(base / "workflow")
    b = base / "run"
    b.mkdir()
    where = ["-s", str(wf / "Snakefile"), "-d", str(b), "--configfile", str(wf / "presets" / "tiny.yaml")]
    ran = proc.stdout + proc.stderr
    target = next((s for s in KILL_PREFERENCE if s.removesuffix(".py") in ran), None)
    assert target, "none of the jobs to kill ran"

    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONHASHSEED="0")
    job = subprocess.Popen([SNAKEMAKE, *TEST_RUN_ARGS, *where], cwd=base, env=env,  # as run A: same threads, same bytes
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed = None
    deadline = time.time() + 900
    try:
        while time.time() < deadline and job.poll() is None:
            pids = [p for p in scripts_running(target) if str(b) in Path(f"/proc/{p}/cwd").resolve().as_posix()]
            if pids:
                time.sleep(1.0)  # let it get going, then kill it mid-run
                for p in pids:
                    os.kill(p, signal.SIGKILL)
                killed = target
                break
            time.sleep(0.2)
        first_out, _ = job.communicate(timeout=900)
    finally:
        if job.poll() is None:
            job.kill()
    assert killed, f"{target} never ran in run B"
    assert job.returncode != 0, "killing a job must fail the run"
    assert sorted(p.name for p in b.iterdir()) == [".snakemake", "benchmarks", "logs", "results"]  # nothing else
    rerun = run_snakemake(base, *where, timeout=1500)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    return a, b, killed, rerun.stdout + rerun.stderr


def test_killed_job_is_redone_and_nothing_differs(two_runs):
    a, b, killed, rerun_log = two_runs
    assert killed.removesuffix(".py") in rerun_log  # the killed job ran again
    da, db = digests(a / "results"), digests(b / "results")
    assert da.keys() == db.keys()
    differing = sorted(k for k in da if da[k] != db[k])
    assert differing == [], differing
    # no temporary files left behind by the killed job
    assert not [p for p in (b / "results").rglob("*.part*")]


def test_runs_cover_every_kind_of_artifact(two_runs):
    a, _, _, _ = two_runs
    kinds = {Path(k).suffix for k in digests(a / "results")}
    assert {".png", ".csv", ".html"} <= kinds
