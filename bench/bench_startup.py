"""Start-up cost of each rule's job: the imports its script makes before doing any work.

Goal (issue 20): rules that run no model import neither diffusers nor transformers, and start in
<= 1.5 s. For every ``scripts/<rule>.py`` this times, in a fresh interpreter, the script's
top-level imports (what the job pays before ``main`` runs), and records which heavy packages they
load. The same is measured for the scripts of another commit (``--ref``, default 3d531c6: the flat
package before the layered one), extracted with ``git archive``, interleaved with ours: every
repeat runs each (rule, checkout) once, so a change in machine load hits both alike. Floors:
``python -c pass`` and ``python -c "import torch"``. Prints medians and writes
bench/out/startup.csv.
Usage: .venv/bin/python bench/bench_startup.py [--ref 3d531c6] [--repeats 5]
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine, write_rows

HEAVY = ("torch", "diffusers", "transformers", "matplotlib", "sklearn", "weasyprint")


def script_imports(path: Path) -> str:
    """The top-level import statements of a rule script, as one program."""
    tree = ast.parse(path.read_text())
    return "\n".join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))


def probe(code: str) -> str:
    """``code`` followed by a line printing which HEAVY packages it loaded."""
    return code + f"\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"


def run_once(code: str, scripts_dir: Path) -> tuple[float, str]:
    env = dict(os.environ, PYTHONPATH=str(scripts_dir))  # that checkout's package first
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=scripts_dir, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def extract(ref: str, dest: Path) -> Path:
    """scripts/ of commit ``ref`` under ``dest``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "scripts"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "scripts"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", default="3d531c6", help="the other checkout's commit (default: before the layered package)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rules", nargs="*", help="only these rule scripts (default: all)")
    ap.add_argument("--out", help="CSV path (default bench/out/startup.csv)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        checkouts = {"ours": ROOT / "scripts", args.ref: extract(args.ref, Path(tmp))}
        rules = sorted(p.stem for p in checkouts["ours"].glob("*.py") if not args.rules or p.stem in args.rules)
        cases = {("python -c pass", "ours"): "pass", ("import torch", "ours"): "import torch"}
        for rule in rules:
            for name, scripts in checkouts.items():
                if (scripts / f"{rule}.py").is_file():
                    cases[(rule, name)] = script_imports(scripts / f"{rule}.py")
        times: dict[tuple[str, str], list[float]] = {k: [] for k in cases}
        loaded: dict[tuple[str, str], str] = {}
        for _ in range(args.repeats):
            for key, code in cases.items():
                seconds, heavy = run_once(probe(code), checkouts[key[1]])
                times[key].append(seconds)
                loaded[key] = heavy
    rows = []
    for (rule, name), ts in times.items():
        other = times.get((rule, args.ref)) if name == "ours" else None
        med = statistics.median(ts)
        rows.append({"rule": rule, "checkout": name, "seconds": round(med, 3),
                     "ratio_other_over_ours": round(statistics.median(other) / med, 2) if other else "",
                     "loads": loaded[(rule, name)] or "-"})
    width = max(len(r["rule"]) for r in rows)
    print(f"{machine()}; median of {args.repeats}, interleaved")
    print(f"{'rule':<{width}}  {'checkout':<8}  {'start-up s':>10}  {'ratio':>6}  loads")
    for r in rows:
        print(f"{r['rule']:<{width}}  {r['checkout']:<8}  {r['seconds']:>10.3f}  {str(r['ratio_other_over_ours']):>6}  {r['loads']}")
    print(write_rows("startup", rows, args.out))


if __name__ == "__main__":
    main()
