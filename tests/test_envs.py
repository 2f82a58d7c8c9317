"""requirements.txt (pip) and envs/*.yaml (conda) pin the same versions."""

import re

import yaml
from conftest import ROOT

# conda-forge name -> pip name where they differ
CONDA_TO_PIP = {"pytorch": "torch", "matplotlib-base": "matplotlib"}


def pip_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: {line!r} is not pinned with =="
            pins[name.lower().replace("-", "_")] = version
    return pins


def env_pins(path) -> dict[str, str]:
    env = yaml.safe_load(path.read_text())
    pins = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for spec in dep.get("pip", []):
                name, _, version = spec.partition("==")
                pins[name.lower().replace("-", "_")] = version
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:=([^=\s]+))?", dep)
        assert m, f"{path.name}: cannot read {dep!r}"
        name, version = m.group(1), m.group(2)
        if name in ("python", "pip"):
            continue
        assert version, f"{path.name}: {name} is not pinned"
        pins[CONDA_TO_PIP.get(name, name).lower().replace("-", "_")] = version
    return pins


def test_every_env_pin_agrees_with_requirements():
    pip = pip_pins()
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert envs, "no envs/*.yaml"
    for path in envs:
        for name, version in env_pins(path).items():
            assert name in pip, f"{path.name}: {name} is not in requirements.txt"
            assert pip[name] == version, f"{path.name}: {name}={version} but requirements.txt has {pip[name]}"


def test_torch_pair_is_the_one_these_machines_take():
    pip = pip_pins()
    assert pip["torch"] == "2.14.1" and pip["torchvision"] == "0.29.1"


def test_every_rule_names_an_existing_env():
    for smk in (ROOT / "rules").glob("*.smk"):
        for env in re.findall(r'conda:\s*\n\s*"([^"]+)"', smk.read_text()):
            assert (ROOT / "rules" / env).resolve().is_file(), f"{smk.name}: {env} does not exist"
