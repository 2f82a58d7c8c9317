"""The SLURM profile (profiles/slurm) on a real single-node SLURM started on localhost.

tests/slurm/local_slurm.sh installs Debian's slurm-wlm and munge (root, apt-get) and starts
munged, slurmctld and slurmd with a fake GPU (GRES gpu:1 on /dev/null) and two partitions, `debug`
(default) and `gpu`. The workflow then runs through `--workflow-profile profiles/slurm`, in a
temporary copy whose profile is set for that cluster the way a user sets it for theirs (partition
names; threads and memory capped to the node). While it runs, one job is cancelled with `scancel`
and the profile's `retries` must finish the workflow anyway. The cluster has no accounting
(slurmdbd), so the run uses `--slurm-status-command squeue` (the default `sacct` would fail and the
plugin would wait forever); every command has a hard timeout and the daemons are stopped at the end.

To stay quick (each SLURM job starts snakemake twice, ~15 s on 2 cores), the run uses
presets/tiny.yaml with every stage but `forward` disabled and an HTML-only report; the full tiny
preset runs locally in tests/test_workflow.py.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import (
    ROOT,
    SNAKEMAKE,
    copy_workflow,
    load_yaml,
    run_snakemake,
    write_config,
)

LOCAL_SLURM = ROOT / "tests" / "slurm" / "local_slurm.sh"
PROFILE = ROOT / "profiles" / "slurm" / "config.yaml"
MODEL_RULES = ("ddim_train", "ddim_sample", "ddim_quality_samples", "ddim_reconstruction", "ddim_interpolation",
               "t2i_train", "t2i_eval", "p2p_edit")
CPU_PARTITION, GPU_PARTITION = "debug", "gpu"  # the local cluster's partitions (local_slurm.sh)
GPU_RULE = "forward_grid"  # asks for a GPU the way the profile's model rules do
# cancelled once while it runs; the retry must finish the workflow. This one because its retry
# can share the node with forward_plots (forward_mse takes both CPUs): the run is ~25 s shorter.
KILLED_RULE = GPU_RULE
RUN_TIMEOUT = 480  # seconds for the whole SLURM run (measured: 84 s, and 151 s with the 2 cores loaded)


def _why_no_local_slurm() -> str | None:
    if sys.platform != "linux" or not Path("/etc/debian_version").exists():
        return "needs Debian (slurm-wlm and munge from apt)"
    if os.geteuid() != 0:
        return "needs root to install and start slurmctld, slurmd and munged"
    if not shutil.which("apt-get") and not shutil.which("slurmctld"):
        return "needs apt-get to install slurm-wlm"
    if not shutil.which("timeout"):
        return "needs coreutils' timeout"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (requirements.txt)"
    return None


needs_local_slurm = pytest.mark.skipif(_why_no_local_slurm() is not None, reason=str(_why_no_local_slurm()))


def _cmd(*args: str, timeout: int = 30, env: dict | None = None, check: bool = True) -> str:
    """Run a command with a hard timeout (KILL) and return its stdout."""
    proc = subprocess.run(
        ["timeout", "-s", "KILL", str(timeout), *args],
        capture_output=True, text=True, env=env, timeout=timeout + 10,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


# --------------------------------------------------------------------------------------------
# The profile itself: parsed, documented, and accepted by snakemake (no cluster needed).


def test_profile_keys_and_comments():
    text = PROFILE.read_text()
    profile = yaml.safe_load(text)
    assert profile["executor"] == "slurm"
    assert isinstance(profile["jobs"], int) and profile["jobs"] >= 1
    assert profile["retries"] >= 1 and profile["rerun-incomplete"] is True
    defaults = profile["default-resources"]
    assert defaults["mem_mb"] > 0 and defaults["runtime"] > 0 and defaults["slurm_partition"]
    # the keys a user must set are marked, the account one included (commented out: optional)
    assert re.search(r"^\s*slurm_partition:.*# SET", text, re.M)
    assert re.search(r"^\s*# slurm_account:.*# SET", text, re.M)
    # every model rule runs on one GPU in the GPU partition, with its own threads, memory, time
    for rule in MODEL_RULES:
        res = profile["set-resources"][rule]
        assert res["gpu"] == 1 and res["slurm_partition"], rule
        assert res["mem_mb"] >= 4000 and res["runtime"] >= 30, rule
        assert profile["set-threads"][rule] >= 1, rule
    # only known rules are configured (a typo would silently configure nothing)
    known = set(MODEL_RULES) | {m for smk in (ROOT / "rules").glob("*.smk") for m in re.findall(r"^rule (\w+):", smk.read_text(), re.M)}
    assert set(profile["set-resources"]) <= known and set(profile["set-threads"]) <= known


@pytest.mark.skipif(
    importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
    reason="snakemake-executor-plugin-slurm is not installed (requirements.txt)",
)
def test_profile_dry_run_plans_every_job_with_its_resources(tmp_path):
    """snakemake reads the profile (executor, set-resources, default-resources) and plans the run."""
    work = copy_workflow(tmp_path / "wf")
    proc = run_snakemake(work, "--workflow-profile", "profiles/slurm", "--configfile", "presets/tiny.yaml", "-n", timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "rule forward_mse:" in out and "slurm_partition=cpu" in out, out[-4000:]
    assert re.search(r"rule forward_mse:(?:\n .*)*?\n\s+resources:.*mem_mb=3000", out), "a rule's own mem_mb must win over the defaults"
    for rule in MODEL_RULES:  # present only once those stages are in the tiny preset
        block = re.search(rf"rule {rule}:\n((?: .*\n)*)", out)
        if block:
            assert "gpu=1" in block.group(1) and "slurm_partition=gpu" in block.group(1), block.group(1)


# --------------------------------------------------------------------------------------------
# A real cluster.


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running local SLURM: yields (state folder, environment for its clients); stops it at the end."""
    why = _why_no_local_slurm()
    if why:
        pytest.skip(why)
    install = subprocess.run(["timeout", "-s", "KILL", "420", "bash", str(LOCAL_SLURM), "install"],
                             capture_output=True, text=True, timeout=440)
    assert install.returncode == 0, f"installing slurm-wlm/munge failed:\n{install.stdout[-2000:]}{install.stderr[-2000:]}"
    state = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(["timeout", "-s", "KILL", "150", "bash", str(LOCAL_SLURM), "start", str(state)],
                           capture_output=True, text=True, timeout=170)
    if start.returncode == 3:
        pytest.skip(start.stderr.strip())
    env = dict(os.environ, SLURM_CONF=str(state / "slurm.conf"))
    try:
        assert start.returncode == 0, f"local SLURM did not start:\n{start.stdout[-3000:]}{start.stderr[-3000:]}"
        yield state, env
    finally:
        subprocess.run(["timeout", "-s", "KILL", "60", "bash", str(LOCAL_SLURM), "stop", str(state)],
                       capture_output=True, text=True, timeout=80)


def _local_profile(profile: dict, cpus: int, mem_mb: int) -> dict:
    """The slurm profile as a user sets it for the local cluster: its partition names, and no job
    larger than the one node. A rule that is not a model rule asks for a GPU like the model rules."""
    local = yaml.safe_load(yaml.safe_dump(profile))
    local["default-resources"]["slurm_partition"] = CPU_PARTITION
    for res in local.get("set-resources", {}).values():
        if "slurm_partition" in res:
            res["slurm_partition"] = GPU_PARTITION if res.get("gpu") else CPU_PARTITION
        if "mem_mb" in res:
            res["mem_mb"] = min(res["mem_mb"], mem_mb)
    for rule, n in local.get("set-threads", {}).items():
        local["set-threads"][rule] = min(n, cpus)
    model = next(res for rule, res in local["set-resources"].items() if rule in MODEL_RULES and res.get("gpu"))
    local["set-resources"][GPU_RULE] = {k: model[k] for k in ("gpu", "gpu_model", "slurm_partition") if k in model}
    return local


def _quick_overlay(work: Path) -> dict:
    """Every stage but forward disabled (whatever the config has by then), and an HTML-only report."""
    cfg = load_yaml(work / "config.yaml")
    overlay = {k: {"enabled": k == "forward"} for k, v in cfg.items() if isinstance(v, dict) and "enabled" in v}
    overlay["report"] = {"formats": ["html"]}
    return overlay


def _squeue(env: dict) -> list[dict]:
    """Every job the cluster knows (finished ones stay MinJobAge = 600 s)."""
    out = _cmd("squeue", "--states=all", "-h", "-o", "%i|%k|%T|%P|%j", env=env, timeout=20)
    keys = ("id", "comment", "state", "partition", "name")
    return [dict(zip(keys, line.split("|"))) for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, tmp_path_factory):
    """The workflow through the slurm profile, with one job cancelled mid-run."""
    state, env = slurm_cluster
    cpus, mem = (int(x) for x in _cmd("sinfo", "-h", "-p", CPU_PARTITION, "-o", "%c %m", env=env).split()[:2])
    work = copy_workflow(tmp_path_factory.mktemp("wf_slurm"))
    profile_path = work / "profiles" / "slurm" / "config.yaml"
    profile_path.write_text(yaml.safe_dump(_local_profile(yaml.safe_load(PROFILE.read_text()), cpus, mem), sort_keys=False))
    write_config(work / "quick.yaml", _quick_overlay(work))
    args = [
        "timeout", "-s", "KILL", str(RUN_TIMEOUT), SNAKEMAKE,
        "--workflow-profile", "profiles/slurm", "--configfile", "presets/tiny.yaml", "quick.yaml",
        "--slurm-status-command", "squeue",        # no accounting on this cluster
        "--slurm-init-seconds-before-status-checks", "2",  # then +10 s per poll until a job ends
        "--seconds-between-status-checks", "2",
        "--slurm-keep-successful-logs",
    ]
    run_env = dict(env, HF_HUB_OFFLINE="1", PYTHONHASHSEED="0")
    log_path = work / "snakemake.out"
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=work, env=run_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        cancelled = None
        try:
            # cancel the first job of KILLED_RULE once it has run for a second (its snakemake is starting)
            running_since = None
            while proc.poll() is None and time.monotonic() - t0 < RUN_TIMEOUT:
                if cancelled is None:
                    job = next((j for j in _squeue(env) if j["comment"] == f"rule_{KILLED_RULE}" and j["state"] == "RUNNING"), None)
                    if job and running_since is None:
                        running_since = time.monotonic()
                    elif job and time.monotonic() - running_since >= 1:
                        _cmd("scancel", job["id"], env=env)
                        cancelled = job["id"]
                time.sleep(0.5)
            proc.wait(timeout=max(1, RUN_TIMEOUT + 15 - (time.monotonic() - t0)))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    elapsed = time.monotonic() - t0
    out = log_path.read_text()
    # the timeline, for `pytest -s` (job start/end as SLURM saw them)
    print(_cmd("squeue", "--states=all", "-o", "%.6i %.20k %.10T %.8P %V %S %e", env=env, timeout=20))
    print(f"slurm run: {elapsed:.0f} s")
    assert proc.returncode == 0, f"slurm run exited {proc.returncode} after {elapsed:.0f} s:\n{out[-6000:]}"
    return {"work": work, "out": out, "jobs": _squeue(env), "cancelled": cancelled, "state": state, "env": env, "elapsed": elapsed}


@pytest.mark.slow
@pytest.mark.slurm
@needs_local_slurm
@pytest.mark.timeout(900)
def test_every_output_made_by_a_slurm_job(slurm_run):
    work, out, jobs = slurm_run["work"], slurm_run["out"], slurm_run["jobs"]
    # the outputs
    for rel in ("results/forward/grid.png", "results/forward/mse.csv", "results/forward/mse_shown.png",
                "results/forward/mse_curve.png", "results/report/report.html"):
        assert (work / rel).stat().st_size > 0, rel
    assert 'id="forward"' in (work / "results/report/report.html").read_text()
    # every rule ran as a SLURM job (only the target `all` ran locally), the one snakemake run's jobs
    rules = set(re.findall(r"^rule (\w+):", out, re.M))
    assert {"forward_clean", "forward_grid", "forward_mse", "forward_plots", "report_html"} <= rules, out[-3000:]
    assert set(re.findall(r"^localrule (\w+):", out, re.M)) == {"all"}
    submitted = dict(re.findall(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", out))
    assert len(submitted) == len(rules) + 1  # + the retry of the cancelled job
    run_names = {j["name"] for j in jobs if j["id"] in submitted}
    assert len(run_names) == 1, "one snakemake run (its UUID is every job's name)"
    by_rule = {}
    for job in jobs:
        if job["id"] in submitted:
            by_rule.setdefault(job["comment"].removeprefix("rule_"), []).append(job)
    assert set(by_rule) == rules
    for rule, rule_jobs in by_rule.items():
        done = [j for j in rule_jobs if j["state"] == "COMPLETED"]
        assert len(done) == 1, (rule, rule_jobs)
        # the job's own SLURM log: the rule ran inside it
        slurm_log = Path(submitted[done[0]["id"]])
        assert slurm_log.is_file() and f"rule {rule}:" in slurm_log.read_text(), slurm_log
        assert done[0]["partition"] == (GPU_PARTITION if rule == GPU_RULE else CPU_PARTITION), (rule, done[0])
    # a no-op rerun through the profile submits nothing
    proc = run_snakemake(work, "--workflow-profile", "profiles/slurm", "--configfile", "presets/tiny.yaml", "quick.yaml", "-n",
                         timeout=300, env=slurm_run["env"])
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.slurm
@needs_local_slurm
@pytest.mark.timeout(900)
def test_cancelled_job_is_retried_and_the_workflow_completes(slurm_run):
    out, jobs, cancelled = slurm_run["out"], slurm_run["jobs"], slurm_run["cancelled"]
    assert cancelled is not None, f"{KILLED_RULE} was never seen RUNNING"
    rule_jobs = {j["id"]: j for j in jobs if j["comment"] == f"rule_{KILLED_RULE}"}
    assert rule_jobs[cancelled]["state"] == "CANCELLED"
    retried = [i for i, j in rule_jobs.items() if j["state"] == "COMPLETED"]
    assert len(retried) == 1 and int(retried[0]) > int(cancelled), rule_jobs
    assert f"SLURM-job '{cancelled}' failed, SLURM status is: 'CANCELLED'" in out
    assert "Trying to restart job" in out
    assert rule_jobs[retried[0]]["partition"] == rule_jobs[cancelled]["partition"]  # same resources
    # the report, which needs the killed rule's output, was submitted after the retry
    report = [int(j["id"]) for j in jobs if j["comment"] == "rule_report_html" and j["state"] == "COMPLETED"]
    assert report and report[0] > int(retried[0])


@pytest.mark.slow
@pytest.mark.slurm
@needs_local_slurm
@pytest.mark.timeout(900)
def test_gpu_request_is_honoured(slurm_run):
    """The rule asking for a GPU (gpu: 1 + the GPU partition, as the model rules do) got one:
    its job steps saw CUDA_VISIBLE_DEVICES; CPU rules' steps did not."""
    jobs = slurm_run["jobs"]
    env_log = (slurm_run["state"] / "log" / "task-env.log").read_text()
    seen = {}
    for line in env_log.splitlines():
        fields = dict(f.split("=", 1) for f in line.split())
        seen.setdefault(fields["job"], set()).add(fields["CUDA_VISIBLE_DEVICES"])
    gpu_jobs = [j for j in jobs if j["comment"] == f"rule_{GPU_RULE}" and j["state"] == "COMPLETED"]
    cpu_jobs = [j for j in jobs if j["comment"] == "rule_forward_clean" and j["state"] == "COMPLETED"]
    assert gpu_jobs and cpu_jobs
    assert seen[gpu_jobs[0]["id"]] == {"0"}, env_log
    assert seen[cpu_jobs[0]["id"]] == {"unset"}, env_log
    assert re.search(rf"rule {GPU_RULE}:(?:\n .*)*?\n\s+resources:.*gpu=1", slurm_run["out"])


@pytest.mark.slow
@pytest.mark.slurm
@needs_local_slurm
def test_stop_ends_every_daemon(slurm_cluster):
    """Last: `local_slurm.sh stop` ends munged, slurmctld and slurmd and removes its slurm.conf link."""
    state, _ = slurm_cluster
    pids = {f.stem: int(f.read_text()) for f in (state / "run").glob("*.pid")}
    assert set(pids) == {"munged", "slurmctld", "slurmd"}
    _cmd("bash", str(LOCAL_SLURM), "stop", str(state), timeout=60)
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/comm").read_text().strip() != name, name
    assert not (Path("/etc/slurm/slurm.conf").is_symlink() and os.readlink("/etc/slurm/slurm.conf") == str(state / "slurm.conf"))
