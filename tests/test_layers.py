"""The package's layers: core < models < stages < report, each importing only the layers below it,
no import cycle, a report layer without torch, and rule scripts that read only what their rule
declares (input, output, params, ...), never the whole config."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

PKG = ROOT / "scripts" / "diffusion_report"
NAME = "diffusion_report"

# Rank of each layer: a module may import modules of its own rank or lower, never higher.
# base: file/image I/O and small helpers every layer uses; config: the checks the Snakemake process
# runs before any job (base and core only); testing: support for tests and benchmarks (anything).
RANKS = {"base": 0, "core": 1, "config": 1.5, "models": 2, "stages": 3, "report": 4, "testing": 5}
BASE = {"io", "images", "lock", "metrics", "figures"}
NO_TORCH = ("torch", "diffusers", "transformers")


def layer(module: str) -> str:
    """``diffusion_report.core.samplers`` -> ``core``; top-level modules are base (or config, testing)."""
    parts = module.split(".")[1:]
    if not parts:
        return "base"
    if parts[0] in ("core", "models", "stages", "report"):
        return parts[0]
    if parts[0] in ("config", "testing"):
        return parts[0]
    assert parts[0] in BASE, f"{module}: not in a layer; add it to one"
    return "base"


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    """Every package module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == NAME:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == NAME}
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods)) - {m} for m, p in mods.items()}


def violations(g: dict[str, set[str]]) -> list[str]:
    """``a -> b`` for every import of a higher layer (or, from base, of any layer but base)."""
    out = []
    for a, deps in g.items():
        for b in deps:
            la, lb = layer(a), layer(b)
            if RANKS[lb] > RANKS[la] or (la == "base" and lb != "base"):
                out.append(f"{a} ({la}) -> {b} ({lb})")
    return sorted(out)


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if not state.get(d):
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if not state.get(m):
            found = visit(m)
            if found:
                return found
    return None


def test_every_layer_imports_only_the_layers_below_it():
    g = graph()
    assert {layer(m) for m in g} >= {"core", "models", "stages", "report"}
    assert violations(g) == []


def test_the_checks_catch_an_upward_import_and_a_cycle():
    g = {f"{NAME}.core.a": {f"{NAME}.stages.b"}, f"{NAME}.stages.b": set(), f"{NAME}.io": {f"{NAME}.core.a"}}
    assert violations(g) == [f"{NAME}.core.a (core) -> {NAME}.stages.b (stages)", f"{NAME}.io (base) -> {NAME}.core.a (core)"]
    assert cycle(g) is None
    g[f"{NAME}.stages.b"] = {f"{NAME}.io"}
    assert cycle(g) == [f"{NAME}.core.a", f"{NAME}.stages.b", f"{NAME}.io", f"{NAME}.core.a"]


def test_there_is_no_import_cycle():
    assert cycle(graph()) is None


def test_report_layer_and_dag_modules_never_load_torch():
    """The report renders from artifacts only (its conda env has no PyTorch), and what the Snakemake
    process imports to build the DAG stays light."""
    light = [m for m in modules() if layer(m) == "report"] + [
        f"{NAME}.config", f"{NAME}.images", f"{NAME}.io", f"{NAME}.lock", f"{NAME}.models.files", f"{NAME}.stages.ddim_cells"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in light)
            + f"print(sorted(m for m in {NO_TORCH!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_report_env_has_no_pytorch():
    deps = yaml.safe_load((ROOT / "envs" / "report.yaml").read_text())["dependencies"]
    names = {str(d).split("=")[0] for d in deps if not isinstance(d, dict)}
    assert not names & {"pytorch", "torchvision", "diffusers", "transformers"}


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "scripts").glob("*.py")))
def test_rule_scripts_read_only_what_their_rule_declares(script):
    """A script passes snakemake.input/output/params/log/threads/resources/wildcards to one package
    function; it never reads the whole config (so every value it uses is a declared param)."""
    text = (ROOT / "scripts" / script).read_text()
    assert not re.search(r"\b(smk|snakemake)\.config\b", text)
    assert "run_rule(snakemake, main)" in text
    used = set(re.findall(r"\bsmk\.(\w+)", text))
    assert used <= {"input", "output", "params", "log", "threads", "resources", "wildcards"}, used
