"""`snakemake --sdm conda`: every rule's envs/*.yaml environment is created once and the rule runs in it.

No conda and no channel can be reached on the test machines, so a stand-in `conda` is put first on
PATH (tests/fixtures/conda-stub): it reads each environment file (YAML, channels, every package
pinned), makes an empty environment whose `python` logs its calls and runs the test's own Python,
and installs nothing. This tests the plumbing (env files parsed, one environment per file, each rule
run with the environment its `conda:` directive names), not that the files solve; tests/test_envs.py
checks that their pins equal requirements.txt.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from conftest import ROOT, copy_workflow, load_yaml, run_snakemake, write_config

STUB = ROOT / "tests" / "fixtures" / "conda-stub"


def rule_envs_and_scripts() -> dict[str, tuple[str | None, str | None]]:
    """{rule: (env file name, script file name)} from the `conda:` and `script:` directives in rules/*.smk."""
    found = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"^(?=rule \w+:)", smk.read_text(), flags=re.M)[1:]:
            name = re.match(r"rule (\w+):", block).group(1)
            env = re.search(r'^\s+conda:\s*\n\s+"([^"]+)"', block, re.M)
            script = re.search(r'^\s+script:\s*\n\s+"([^"]+)"', block, re.M)
            found[name] = (env and Path(env.group(1)).name, script and Path(script.group(1)).name)
    return found


@pytest.fixture
def conda_env(tmp_path):
    """Environment variables that put the stub `conda` first on PATH and log what it does."""
    stub = tmp_path / "conda-stub"
    shutil.copytree(STUB, stub, ignore=shutil.ignore_patterns("__pycache__"))
    (stub / "bin" / "conda").chmod(0o755)
    log = tmp_path / "conda-stub.log"
    log.touch()
    env = {
        "PATH": f"{stub / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "CONDA_STUB_PYTHON": sys.executable,
        "CONDA_STUB_LOG": str(log),
    }
    return env, log


def created_envs(work: Path, log: Path) -> dict[str, Path]:
    """{env file name: environment prefix} for every `conda env create` the stub received."""
    by_text = {p.read_text(): p.name for p in (work / "envs").glob("*.yaml")}
    created = {}
    for line in log.read_text().splitlines():
        if line.startswith("create "):
            _, file, prefix = line.split(" ", 2)
            name = by_text.get(Path(file).read_text(), f"unknown:{file}")  # snakemake copies the file beside the prefix
            assert name not in created, f"{name} created twice"
            created[name] = Path(prefix)
    return created


def test_stub_refuses_an_unpinned_env_file(tmp_path, conda_env):
    """The stand-in reads env files for real: an unpinned package stops the run with the file's name."""
    env, log = conda_env
    work = copy_workflow(tmp_path / "wf")
    torch_env = work / "envs" / "torch.yaml"
    torch_env.write_text(re.sub(r"^(\s+- numpy)=\S+", r"\1", torch_env.read_text(), flags=re.M))
    proc = run_snakemake(work, "--sdm", "conda", "--conda-create-envs-only", "--configfile", "presets/tiny.yaml", timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "not pinned" in out and "numpy" in out, out[-3000:]


def test_every_env_file_is_created_once(tmp_path, conda_env):
    """The whole tiny DAG (every stage) with --sdm conda: each envs/*.yaml becomes one environment."""
    env, log = conda_env
    work = copy_workflow(tmp_path / "wf")
    proc = run_snakemake(work, "--sdm", "conda", "--conda-create-envs-only", "--configfile", "presets/tiny.yaml", timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    created = created_envs(work, log)
    assert set(created) == {p.name for p in (work / "envs").glob("*.yaml")}, (
        f"created {sorted(created)}: the tiny preset runs every stage, so every env file should be needed"
    )
    for prefix in created.values():
        assert prefix.parent == work / ".snakemake" / "conda" and (prefix / "bin" / "python").is_file()
        assert prefix.with_suffix(".env_setup_done").exists()
    # a second call finds them all and creates nothing
    proc = run_snakemake(work, "--sdm", "conda", "--conda-create-envs-only", "--configfile", "presets/tiny.yaml", timeout=300, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert len([line for line in log.read_text().splitlines() if line.startswith("create ")]) == len(created)


@pytest.mark.slow
def test_each_rule_runs_in_its_env(tmp_path, conda_env):
    """The forward stage and the HTML report run with --sdm conda; each rule's script is run by the
    python of the environment its `conda:` directive names (the stub's python logs every call)."""
    env, log = conda_env
    work = copy_workflow(tmp_path / "wf")
    cfg = load_yaml(work / "config.yaml")
    overlay = {k: {"enabled": k == "forward"} for k, v in cfg.items() if isinstance(v, dict) and "enabled" in v}
    overlay["report"] = {"formats": ["html"]}
    write_config(work / "quick.yaml", overlay)
    proc = run_snakemake(work, "--sdm", "conda", "--configfile", "presets/tiny.yaml", "quick.yaml", timeout=600, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    for rel in ("results/forward/mse.csv", "results/forward/grid.png", "results/report/report.html"):
        assert (work / rel).stat().st_size > 0, rel

    env_of_prefix = {str(prefix): name for name, prefix in created_envs(work, log).items()}
    ran = {}  # script file name -> env file names whose python ran it
    for line in log.read_text().splitlines():
        if line.startswith("run "):
            _, prefix, *argv = line.split(" ")
            if argv and argv[0].endswith(".py"):
                script = Path(argv[0]).name.split(".", 1)[1]  # .snakemake/scripts/tmpXXXX.<script>.py
                ran.setdefault(script, set()).add(env_of_prefix[prefix])
    declared = rule_envs_and_scripts()
    executed = set(re.findall(r"^(?:local)?rule (\w+):", out, re.M)) - {"all"}
    assert {"forward_clean", "forward_mse", "report_html"} <= executed, out[-3000:]
    for rule in executed:
        env_file, script = declared[rule]
        assert env_file and script, f"{rule} has no conda: or script: directive"
        assert ran.get(script) == {env_file}, f"{rule}: {script} ran with {ran.get(script)}, declared {env_file}"
    # rerun: nothing to do, no environment created again
    creates = log.read_text().count("\ncreate ") + log.read_text().startswith("create ")
    proc = run_snakemake(work, "--sdm", "conda", "--configfile", "presets/tiny.yaml", "quick.yaml", "-n", timeout=300, env=env)
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr
    assert log.read_text().count("\ncreate ") + log.read_text().startswith("create ") == creates
