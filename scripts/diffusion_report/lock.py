"""Stale Snakemake locks: clear the one a killed run left behind, never one a live run holds.

Snakemake writes ``.snakemake/locks/<n>.input.lock`` and ``<n>.output.lock`` while it runs and
removes them when it ends, also on Ctrl-C. A hard kill (``kill -9``, the OOM killer, a closed
terminal's SIGHUP) leaves them, and every later run fails with ``LockException`` until
``snakemake --unlock``. ``make report`` runs this first::

    PYTHONPATH=scripts python -m diffusion_report.lock [--directory DIR] [--snakemake EXE] [-- ARGS]

* no lock files: nothing to do (exit 0);
* lock files, and no running process here whose command line mentions snakemake (the snakemake
  process itself, or a job it started, which may still be writing): print "removing a stale lock
  left by a killed run" and run ``EXE ARGS --unlock`` in DIR (its exit status);
* lock files and such a process: print its pid and command line, unlock nothing, exit 1.

"Here" means the process's working directory (``/proc/<pid>/cwd``) or its ``--directory``/``-d``
argument is DIR. This process and its ancestors (the ``make`` recipe's shell, whose command line
names snakemake too) are not counted. Processes of other users, whose working directory cannot be
read, are not seen.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

STALE_MESSAGE = "removing a stale lock left by a killed run"


def lock_files(workdir: str | os.PathLike = ".") -> list[Path]:
    """The lock files Snakemake left in ``workdir`` (an empty locks folder is not a lock)."""
    folder = Path(workdir, ".snakemake", "locks")
    return sorted(p for p in folder.glob("*.lock") if p.is_file()) if folder.is_dir() else []


def _directory_arg(cmdline: list[str]) -> str | None:
    for i, arg in enumerate(cmdline):
        if arg in ("-d", "--directory") and i + 1 < len(cmdline):
            return cmdline[i + 1]
        if arg.startswith("--directory="):
            return arg.split("=", 1)[1]
    return None


def live_snakemake(workdir: str | os.PathLike = ".") -> list[tuple[int, str]]:
    """(pid, command line) of running processes that mention snakemake and work in ``workdir``."""
    import psutil

    here = Path(workdir).resolve()
    me = psutil.Process()
    skip = {me.pid, *(p.pid for p in me.parents())}
    found = []
    for proc in psutil.process_iter(["pid"]):
        if proc.pid in skip:
            continue
        try:
            cmdline = proc.cmdline()
            if not any("snakemake" in arg for arg in cmdline) or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            cwd = Path(proc.cwd())
        except (psutil.Error, OSError):  # gone, a zombie, or another user's
            continue
        directory = _directory_arg(cmdline)
        where = (cwd / directory) if directory else cwd
        try:
            if where.resolve() == here:
                found.append((proc.pid, " ".join(cmdline)))
        except OSError:
            continue
    return sorted(found)


def clear_stale_lock(workdir: str | os.PathLike, snakemake: list[str], out=None) -> int:
    """Unlock ``workdir`` when it holds a lock that no running snakemake owns; see the module doc.

    ``snakemake`` is the command to run with ``--unlock`` appended (the same configuration
    arguments as the run, so that the workflow parses). Returns the exit status for the caller.
    """
    out = out or sys.stdout
    locks = lock_files(workdir)
    if not locks:
        return 0
    live = live_snakemake(workdir)
    folder = Path(workdir, ".snakemake", "locks")
    if live:
        print(f"{folder} is held by a running snakemake (not unlocking under a live run):", file=out)
        for pid, cmdline in live:
            print(f"  pid {pid}: {cmdline}", file=out)
        print("wait for it to finish, or stop it (kill PID; Ctrl-C in its terminal), then run this again", file=out)
        return 1
    print(f"{STALE_MESSAGE} ({len(locks)} lock file(s) in {folder}, no snakemake is running there)", file=out, flush=True)
    return subprocess.run([*snakemake, "--unlock"], cwd=workdir).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m diffusion_report.lock", description=__doc__.split("\n")[0])
    parser.add_argument("--directory", default=".", help="the workflow's working directory (default: .)")
    parser.add_argument("--snakemake", default=str(Path(sys.executable).with_name("snakemake")),
                        help="the snakemake executable (default: the one next to this Python)")
    parser.add_argument("args", nargs="*", help="arguments for `snakemake --unlock` (after --), e.g. --configfile X")
    ns = parser.parse_args(argv)
    return clear_stale_lock(ns.directory, [ns.snakemake, *ns.args])


if __name__ == "__main__":
    sys.exit(main())
