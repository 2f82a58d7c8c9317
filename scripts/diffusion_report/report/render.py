"""The report: gather every stage's results into plain data, render HTML with jinja2, print a PDF.

Stages register their artifacts in ``REPORT_INPUTS`` (rules/*.smk); each stage module provides
``report_context(files, config) -> dict``; each section is a jinja2 partial in
``report/templates/sections/<stage>.html.j2``. Numbers in prose come from those contexts.
"""

from __future__ import annotations

import base64
import html
import importlib
import importlib.metadata
import logging
import math
import mimetypes
import os
import re
import shutil
import subprocess
import sys
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import yaml
from markupsafe import Markup, escape

from diffusion_report.io import atomic_path, sha256_file, write_text
from diffusion_report.report.latex import inline_tex

log = logging.getLogger(__name__)

# Report order: stage key -> (module providing report_context, section title for the contents)
# stage -> (report.sections module, title): the titles are the sections' headings, word for word
SECTIONS: dict[str, tuple[str, str]] = {
    "theory": ("theory", "Theory: the forward and reverse processes"),
    "forward": ("forward", "Forward diffusion"),
    "ddim": ("ddim", Markup("DDIM: fewer sampling steps from one fixed x<sub>T</sub>")),
    "p2p": ("p2p", "Prompt-to-prompt editing"),
    "t2i": ("t2i", "The embedded text-to-image model and a ground-truth evaluation of prompt-to-prompt"),
}

PACKAGES = ("snakemake", "torch", "torchvision", "diffusers", "transformers", "numpy", "pandas", "matplotlib",
            "scikit-image", "scikit-learn", "jinja2", "weasyprint", "pypandoc_binary", "ziamath")

# A fixed date for the PDF metadata, so the same HTML prints to the same bytes.
PDF_DATE = "2000-01-01T00:00:00Z"
PDF_EPOCH = 946684800  # the same instant in seconds since 1970


LABELS = {"figure": ("Figure", "fig"), "table": ("Table", "tab")}


@dataclass
class Numbering:
    """Figure and table counters for one render (used by the macros), and cross-references.

    A figure or table made with a ``key`` records its number; ``ref(key)`` links to it by number
    ("Figure 3"), also before it appears: :func:`report_html` renders twice, the first pass only
    collecting the numbers (``known``) that the second pass refers to.
    """

    counts: dict[str, int] = field(default_factory=dict)
    keys: dict[str, tuple[str, int]] = field(default_factory=dict)
    known: dict[str, tuple[str, int]] = field(default_factory=dict)
    duplicates: set[str] = field(default_factory=set)

    def next(self, kind: str, key: str | None = None) -> int:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if key:
            if key in self.keys:
                self.duplicates.add(key)
            self.keys[key] = (kind, self.counts[kind])
        return self.counts[kind]

    def ref(self, key: str) -> Markup:
        """A link to the figure or table ``key`` ("Figure n"); a placeholder while it is unknown."""
        found = self.known.get(key) or self.keys.get(key)
        if found is None:
            return Markup('<span class="xref-missing">[{}]</span>').format(key)
        word, prefix = LABELS[found[0]]
        return Markup('<a class="xref" href="#{}-{}">{} {}</a>').format(prefix, found[1], word, found[1])

    def restart(self) -> None:
        """Start the next pass: numbers seen so far become the known ones, counters restart."""
        self.known, self.keys, self.counts, self.duplicates = dict(self.keys), {}, {}, set()


def data_uri(path: str | Path) -> str:
    """Inline a file as a data: URI (images and fonts are embedded; nothing is fetched)."""
    path = Path(path)
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def fmt(value, digits: int = 4) -> str:
    """A number for prose and tables: ``digits`` significant digits, integers as they are; markup
    (typeset notation, :class:`markupsafe.Markup`) as it is."""
    if isinstance(value, Markup):
        return value
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    try:
        x = float(value)
    except (TypeError, ValueError):
        return str(value)
    if x != x:
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-4:
        return f"{x:.{max(digits - 1, 1)}e}"
    return f"{x:.{digits}g}"


def measured(value) -> Markup:
    """Mark a measured value (a wall time, a speed-up) that differs from run to run."""
    return Markup('<span class="measured">') + escape(value) + Markup("</span>")


def path_breaks(value) -> Markup:
    """A path that may wrap after each ``/`` (and only there) in a narrow table cell."""
    return Markup("/<wbr>").join(escape(part) for part in str(value).split("/"))


def math_markup(tex: str) -> Markup:
    r"""One inline formula typeset like the theory section (SVG, its TeX as text alternative); in
    templates ``{{ math("\\bar\\alpha_T") }}`` (jinja reads backslash escapes in string literals)."""
    return Markup(inline_tex(f"${tex}$"))


def tex_markup(text: str) -> Markup:
    """Text with ``$...$`` math (and ```code```), typeset like the theory section; escaped otherwise."""
    return Markup(inline_tex(str(text)))


def pct(value, digits: int = 2) -> str:
    return f"{float(value) * 100:.{digits}g}%"


def environment(templates_dir: str | Path):
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    numbering = Numbering()
    env.globals.update(data_uri=data_uri, numbering=numbering, ref=numbering.ref, fmt=fmt, pct=pct, measured=measured,
                       math=math_markup)
    env.filters.update(fmt=fmt, pct=pct, data_uri=data_uri, measured=measured, tex=tex_markup, path_breaks=path_breaks)
    env.tests["startingwith"] = lambda value, prefix: str(value).startswith(prefix)
    return env


def split_inputs(flat: dict[str, str]) -> dict[str, dict[str, str]]:
    """{"<stage>__<name>": path} (the report rule's named inputs) -> {stage: {name: path}}."""
    out: dict[str, dict[str, str]] = {}
    for key, path in flat.items():
        stage, _, name = key.partition("__")
        if name:
            out.setdefault(stage, {})[name] = str(path)
    return out


def stage_contexts(files: dict[str, dict[str, str]], config: dict) -> list[dict]:
    """Call each enabled stage's report_context, in report order."""
    sections = []
    for stage, (module, title) in SECTIONS.items():
        if stage not in files:
            continue
        mod = importlib.import_module(f"diffusion_report.report.sections.{module}")
        ctx = mod.report_context(files[stage], config)
        sections.append({"stage": stage, "title": title, "ctx": ctx, "answer": mod.answer(ctx, config)})
    return sections


def models_used(config: dict) -> dict:
    """Which models this run used, for the answers up front: per stage, embedded or a pretrained id."""
    stages = {"ddim": ("DDIM (exercise 4)", "a DDPM trained by this workflow on scikit-learn's digits"),
              "p2p": ("prompt-to-prompt (exercise 5)", "a text-to-image model trained by this workflow on captioned shapes")}
    out, embedded = {}, False
    for block, (what, ours) in stages.items():
        if not config.get(block, {}).get("enabled", True):
            continue
        m = config[block].get("model", {})
        trained = m.get("source", "train") == "train"
        embedded |= trained
        out[what] = f"{ours} (the embedded default)" if trained else f"the pretrained {m.get('pretrained')}"
    return {"models": out, "embedded": embedded}


def git_state(repo: str | Path) -> dict:
    """Commit and dirtiness of the workflow's checkout (or why they are unknown)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return {"commit": "not a git checkout", "dirty": None}
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "git not available", "dirty": None}


def package_versions() -> list[dict]:
    rows = []
    for name in PACKAGES:
        try:
            rows.append({"package": name, "version": importlib.metadata.version(name)})
        except importlib.metadata.PackageNotFoundError:
            rows.append({"package": name, "version": "not installed"})
    return rows


def benchmark_rows(bench_dir: str | Path) -> list[dict]:
    """Per-rule wall time and peak memory from Snakemake's benchmark: files (benchmarks/<rule>/*.tsv)."""
    rows = []
    for tsv in sorted(Path(bench_dir).glob("*/*.tsv")):
        try:
            df = pd.read_csv(tsv, sep="\t")
        except (pd.errors.EmptyDataError, pd.errors.ParserError):
            continue
        if df.empty:
            continue
        rss = pd.to_numeric(df.get("max_rss", pd.Series([float("nan")])), errors="coerce")
        rows.append({
            "rule": tsv.parent.name,
            "job": tsv.stem,
            "wall time (s)": float(df["s"].iloc[-1]),
            "peak memory (MB)": float(rss.iloc[-1]) if len(rss) else float("nan"),
        })
    return rows


# The report's own rules: their benchmark files are written after they finish, so any present while
# the report renders are from an earlier render and are left out of the run's totals.
REPORT_RULES = ("report_html", "report_pdf")


def utc_text(timestamp: float) -> str:
    """A POSIX time as 'YYYY-MM-DD HH:MM:SS UTC'."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration_text(seconds: float) -> str:
    """Seconds as '12.3 s', '4 min 05 s' or '2 h 03 min 04 s'."""
    if seconds != seconds:
        return "n/a"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    h, rest = divmod(whole, 3600)
    m, sec = divmod(rest, 60)
    return f"{h} h {m:02d} min {sec:02d} s" if h else f"{m} min {sec:02d} s"


def run_times(bench_dir: str | Path, now: datetime) -> dict:
    """The run's wall time from Snakemake's benchmark files (benchmarks/<rule>/*.tsv).

    total: the sum of every job's wall time (column ``s``, all repeats); each job's start is its
    file's modification time (written when the job ends) minus that time; span: from the earliest
    start to ``now`` (the report's render). The report's own rules (:data:`REPORT_RULES`) are left
    out. Jobs of earlier invocations whose outputs were reused count too: the span then covers
    the time between invocations.
    """
    total, starts = 0.0, []
    for tsv in sorted(Path(bench_dir).glob("*/*.tsv")):
        if tsv.parent.name in REPORT_RULES:
            continue
        try:
            df = pd.read_csv(tsv, sep="\t")
        except (pd.errors.EmptyDataError, pd.errors.ParserError, OSError):
            continue
        secs = pd.to_numeric(df.get("s", pd.Series(dtype=float)), errors="coerce").dropna()
        if secs.empty:
            continue
        total += float(secs.sum())
        starts.append(tsv.stat().st_mtime - float(secs.sum()))
    out = {"n_jobs": len(starts), "date": utc_text(now.timestamp())}
    if starts:
        start = min(starts)
        span = now.timestamp() - start
        if span < 0:  # a clock set differently where the jobs ran (another node): no honest span
            span = math.nan
        out.update(total=duration_text(total), total_s=total, start=utc_text(start),
                   span=duration_text(span), span_s=span)
    return out


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """CPU model from /proc/cpuinfo ("model name"), with the number of logical CPUs listed there."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    names = [ln.split(":", 1)[1].strip() for ln in text.splitlines()
             if ln.split(":", 1)[0].strip().lower() == "model name" and ":" in ln]
    if not names:
        import platform

        return platform.processor() or platform.machine() or "unknown"
    models = list(dict.fromkeys(names))
    return f"{', '.join(models)} ({len(names)} logical CPU{'s' if len(names) != 1 else ''})"


def gpu_model(timeout: float = 20.0) -> str:
    """GPU models: ``nvidia-smi -L`` if present (UUIDs left out); else torch.cuda if torch is already
    imported (the report layer never imports it for this); else "none"."""
    exe = shutil.which("nvidia-smi")
    if exe:
        try:
            proc = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=timeout)
            names = [re.sub(r"\s*\((?:UUID|S/N):[^)]*\)", "", ln.split(":", 1)[1]).strip()
                     for ln in proc.stdout.splitlines() if proc.returncode == 0 and re.match(r"GPU \d+:", ln)]
        except (OSError, subprocess.SubprocessError):
            names = []
        if names:
            return ", ".join(f"{names.count(n)} x {n}" if names.count(n) > 1 else n for n in dict.fromkeys(names))
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        except Exception:  # noqa: BLE001 - a broken driver is "none" for the provenance line
            pass
    return "none"


def artifact_paths(paths: list[str], workdir: str | Path) -> list[str]:
    """Each artifact's path as the reader would find it: relative to the run's working directory
    (what Snakemake passes, e.g. results/ddim/eta0/side_by_side.png); paths outside it relative to
    the deepest folder holding all of those."""
    work = os.path.abspath(workdir)
    absolute = [os.path.abspath(p) for p in paths]

    def inside(a: str) -> bool:
        return os.path.commonpath([a, work]) == work

    outside = [os.path.dirname(a) for a in absolute if not inside(a)]
    base = os.path.commonpath(outside) if outside else work
    return [Path(os.path.relpath(a, work if inside(a) else base)).as_posix() for a in absolute]


def provenance(config: dict, files: dict[str, dict[str, str]], repo: str | Path, bench_dir: str | Path,
               now: datetime | None = None, workdir: str | Path = ".") -> dict:
    """Plain data for the provenance section. ``now`` (default: the current time, UTC) dates the
    report; every run- or machine-dependent value is marked measured by the template."""
    import platform

    found = [(stage, path) for stage, named in files.items() for path in named.values() if Path(path).is_file()]
    rel = artifact_paths([path for _, path in found], workdir)
    artifacts = [
        {"stage": stage, "path": shown, "sha256": sha256_file(path),
         "_measured": Path(path).name.startswith("timing")}  # wall times: differ from run to run
        for (stage, path), shown in zip(found, rel)
    ]
    now = now or datetime.now(timezone.utc)
    return {
        "config_yaml": yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=100, allow_unicode=True),
        "git": git_state(repo),
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "device": config.get("device", "auto"),
        "seed": config.get("seed"),
        "benchmarks": benchmark_rows(bench_dir),
        "run": run_times(bench_dir, now),
        "cpu": cpu_model(),
        "gpu": gpu_model(),
        "artifacts": artifacts,
    }


def drawable_codepoints() -> set[int] | None:
    """Every code point some installed font can draw, as fontconfig sees it (WeasyPrint finds its
    fonts, and the fallback for a missing glyph, through fontconfig); None without ``fc-list``."""
    try:
        out = subprocess.run(["fc-list", "--format", "%{charset}\n"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    points: set[int] = set()
    for span in out.split():  # "20-7e a0-1a9 ... 1f600" per font
        lo, _, hi = span.partition("-")
        try:
            points.update(range(int(lo, 16), int(hi or lo, 16) + 1))
        except ValueError:
            continue
    return points


_TAG = re.compile(r"<style\b.*?</style>|<script\b.*?</script>|<[^>]*>", re.S | re.I)


def visible_text(page: str) -> str:
    """The text of an HTML page as printed: markup, stylesheets and attributes (image data) left out."""
    return html.unescape(_TAG.sub(" ", page))


def undrawable_characters(text: str, drawable: set[int]) -> list[str]:
    """The distinct characters of ``text`` that no font in ``drawable`` has, in code point order.
    Spaces, controls, format characters (joiners) and variation selectors need no glyph."""
    out = set()
    for ch in set(text):
        if ord(ch) in drawable or ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp"):
            continue
        if 0xFE00 <= ord(ch) <= 0xFE0F or 0xE0100 <= ord(ch) <= 0xE01EF:
            continue
        out.add(ch)
    return sorted(out)


def glyph_label(ch: str) -> str:
    return f"U+{ord(ch):04X} {unicodedata.name(ch, 'unnamed character')}"


def broken_links(page: str) -> list[str]:
    """The targets of in-page links (``href="#..."``) that no element of the page has as its id, sorted."""
    ids = set(re.findall(r'\sid="([^"]+)"', page))
    return sorted({target for target in re.findall(r'\shref="#([^"]*)"', page) if target not in ids})


def references_html(sections: list[dict]) -> Markup:
    """The reference lists the sections' contexts carry (``references``: citeproc's HTML, from the theory
    section), for the report's own last section "References"; empty when nothing is cited."""
    return Markup("".join(s["ctx"].get("references") or "" for s in sections))


def report_html(flat_inputs: dict[str, str], config: dict, templates_dir: str | Path, css_path: str | Path,
                out_html: str | Path, repo: str | Path = ".", bench_dir: str | Path = "benchmarks",
                now: datetime | None = None) -> str:
    """Render the self-contained HTML report and write it atomically; returns the HTML.

    ``now`` dates the report (default: the current time); it and every other run-dependent value
    are marked measured, so two renders differ only inside those marks. Characters that no
    installed font can draw (an emoji, a script without a font) would print as blank boxes in the
    PDF with only a WeasyPrint warning in a log; they are listed in a visible note at the top of
    the report instead (and logged). The sections' reference lists make one section "References"
    after the last exercise; an in-page link without its target (a citation, a figure) stops the render."""
    files = split_inputs(flat_inputs)
    env = environment(templates_dir)
    sections = stage_contexts(files, config)
    context = dict(
        title=config.get("report", {}).get("title", "Diffusion models"),
        sections=sections,
        references=references_html(sections),
        models=models_used(config),
        config=config,
        css=Path(css_path).read_text(encoding="utf-8"),
        provenance=provenance(config, files, repo, bench_dir, now=now),
        pdf_date=PDF_DATE,
        escape=html.escape,
        missing_glyphs=[],
    )
    template = env.get_template("base.html.j2")
    numbering = env.globals["numbering"]

    def render(**extra) -> str:  # twice: the first pass numbers the figures and tables the text refers to
        template.render(**{**context, **extra})
        numbering.restart()
        page = template.render(**{**context, **extra})
        if numbering.duplicates:
            raise ValueError(f"report: several figures or tables are keyed {', '.join(sorted(numbering.duplicates))}")
        numbering.restart()
        missing = re.findall(r'<span class="xref-missing">\[([^]]*)\]</span>', page)
        if missing:
            raise ValueError(f"report: the text refers to figures or tables that are not in it: {', '.join(sorted(set(missing)))}")
        broken = broken_links(page)
        if broken:
            raise ValueError(f"report: links to anchors that are not in it: {', '.join(broken)}")
        return page

    page = render()
    drawable = drawable_codepoints()
    if drawable is None:
        log.warning("fc-list (fontconfig) not found: cannot tell which characters the PDF's fonts lack")
    else:
        missing = undrawable_characters(visible_text(page), drawable)
        if missing:
            labels = [glyph_label(ch) for ch in missing]
            log.warning("no installed font draws %d character(s) of the report: %s", len(missing), ", ".join(labels))
            page = render(missing_glyphs=labels)
    write_text(out_html, page)
    return page


def report_pdf(html_path: str | Path, out_pdf: str | Path) -> None:
    """Print the HTML to PDF with WeasyPrint (same document, print stylesheet, fixed metadata)."""
    from weasyprint import HTML

    doc = HTML(filename=str(html_path), base_url=str(Path(html_path).parent)).render()
    doc.metadata.created = PDF_DATE
    doc.metadata.modified = PDF_DATE
    # fontTools stamps each embedded font subset's head table with the time it was made, unless
    # SOURCE_DATE_EPOCH says otherwise: without it, two prints a second apart differ in bytes
    before = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = str(PDF_EPOCH)
    try:
        with atomic_path(out_pdf) as tmp:
            doc.write_pdf(str(tmp), pdf_identifier=b"diffusion-report")
    finally:
        if before is None:
            os.environ.pop("SOURCE_DATE_EPOCH", None)
        else:
            os.environ["SOURCE_DATE_EPOCH"] = before

