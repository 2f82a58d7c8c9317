"""Benchmark: the whole pipeline as a user runs it.

In a fresh copy of the workflow (or ``--workdir``), with ``snakemake --cores 2``:

1. a cold run of the config (goal: <= 15 min for the embedded default on 2 CPU cores);
2. no-op reruns: wall time and number of jobs (goal: <= 3 s, 0 jobs), median of ``--repeats``;
3. a dry run after changing only one prompt-to-prompt edit: the jobs it would run (goal: that
   edit, the metrics table and the report, nothing else);
4. the report render (rules report_html and report_pdf), and wall time and peak memory (max RSS)
   per rule, read from Snakemake's benchmark files (benchmarks/<rule>/*.tsv).

Writes bench/out/pipeline.csv (one row per rule) and bench/out/pipeline_summary.csv.

    .venv/bin/python bench/bench_pipeline.py                 # the embedded default (~13 min cold)
    .venv/bin/python bench/bench_pipeline.py --preset presets/tiny.yaml     # the smoke preset (~2.5 min)
    .venv/bin/python bench/bench_pipeline.py --workdir /tmp/run --no-cold   # reuse a finished run
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import yaml
from _common import machine, write_rows

from diffusion_report.testing import copy_workflow, job_stats, run_snakemake


def snakemake(work: Path, *args: str) -> tuple[float, str]:
    """(wall seconds, merged output) of one ``snakemake --cores 2`` call, as ``make report`` runs it
    (each rule with its own ``threads:``, not the tests' one thread per job)."""
    t0 = time.perf_counter()
    proc = run_snakemake(work, *args, timeout=3 * 3600, run_args=("--cores", "2"))
    wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"snakemake {' '.join(args)} failed:\n{out[-3000:]}")
    return wall, out


def rule_benchmarks(work: Path) -> list[dict]:
    """Per rule: jobs, summed and largest wall time, largest max RSS, from benchmarks/<rule>/*.tsv."""
    rows = []
    for folder in sorted((work / "benchmarks").iterdir()):
        recs = []
        for tsv in sorted(folder.rglob("*.tsv")):
            with tsv.open() as fh:
                recs += list(csv.DictReader(fh, delimiter="\t"))
        if not recs:
            continue
        s = [float(r["s"]) for r in recs]
        rss = [float(r["max_rss"]) for r in recs if r["max_rss"] not in ("", "NA", "-")]
        rows.append({"rule": folder.name, "jobs": len(recs), "wall_s_sum": round(sum(s), 2), "wall_s_max": round(max(s), 2),
                     "max_rss_mib": round(max(rss), 1) if rss else None})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", help="a config overlay (e.g. presets/tiny.yaml); default: config.yaml alone")
    ap.add_argument("--workdir", help="run here (default: a fresh copy of the workflow in a temporary folder)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold run (the workdir holds a finished run)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out-dir", help="folder of the two CSVs (default bench/out)")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-pipeline-"))
    if not args.no_cold:
        copy_workflow(work)
    extra = ["--configfile", args.preset] if args.preset else []
    summary = {"config": args.preset or "config.yaml (embedded default)", "workdir": str(work)}

    if not args.no_cold:
        wall, out = snakemake(work, *extra)
        summary["cold_run_s"] = round(wall, 1)
        summary["cold_run_jobs"] = sum(job_stats(out).values())
        print(f"cold run: {wall:.1f} s, {summary['cold_run_jobs']} jobs", flush=True)

    noop = []
    for _ in range(args.repeats):
        wall, out = snakemake(work, *extra)
        noop.append(wall)
        if job_stats(out):
            raise SystemExit(f"a rerun with nothing changed ran jobs: {job_stats(out)}")
    summary["noop_rerun_s"] = round(statistics.median(noop), 2)
    summary["noop_rerun_jobs"] = 0
    print(f"no-op rerun: {summary['noop_rerun_s']} s (median of {args.repeats}), 0 jobs", flush=True)

    config = yaml.safe_load((work / "config.yaml").read_text())
    if args.preset:
        from snakemake.utils import (
            update_config,  # how Snakemake merges --configfile overlays
        )

        update_config(config, yaml.safe_load((work / args.preset).read_text()) or {})
    edits = config["p2p"]["edits"]
    edits[0]["seed"] = int(edits[0].get("seed", 0)) + 1
    overlay = work / "bench-edit-overlay.yaml"
    overlay.write_text(yaml.safe_dump({"p2p": {"edits": edits}}, sort_keys=False))
    configfiles = [args.preset, str(overlay)] if args.preset else [str(overlay)]
    wall, out = snakemake(work, "-n", "--configfile", *configfiles)  # one flag: a second would replace the first
    jobs = job_stats(out)
    overlay.unlink()
    summary["edit_change_dry_run_s"] = round(wall, 2)
    summary["edit_change_jobs"] = " ".join(f"{k}:{v}" for k, v in sorted(jobs.items()))
    print(f"changing edit {edits[0]['name']!r} would run: {summary['edit_change_jobs']}", flush=True)

    rules = rule_benchmarks(work)
    by = {r["rule"]: r for r in rules}
    summary["report_render_s"] = round(sum(by[r]["wall_s_sum"] for r in ("report_html", "report_pdf") if r in by), 2)
    summary["peak_rss_mib"] = max((r["max_rss_mib"] or 0) for r in rules)
    summary["peak_rss_rule"] = max(rules, key=lambda r: r["max_rss_mib"] or 0)["rule"]
    print(f"{'rule':<22} {'jobs':>4} {'wall s (sum)':>12} {'wall s (max)':>12} {'max RSS MiB':>12}")
    for r in rules:
        print(f"{r['rule']:<22} {r['jobs']:>4} {r['wall_s_sum']:>12} {r['wall_s_max']:>12} {r['max_rss_mib']!s:>12}")
    for k, v in summary.items():
        print(f"{k}: {v}")
    print(f"machine: {machine()}")
    out = Path(args.out_dir) if args.out_dir else None
    a = write_rows("pipeline", rules, out / "pipeline.csv" if out else None)
    b = write_rows("pipeline_summary", [summary], out / "pipeline_summary.csv" if out else None)
    print(f"wrote {a} and {b}")


if __name__ == "__main__":
    main()
