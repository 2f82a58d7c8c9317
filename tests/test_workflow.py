"""End to end: the whole workflow on the tiny preset in a temporary copy of the repository."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import ROOT, copy_workflow, job_stats, load_yaml, run_snakemake

pytestmark = pytest.mark.slow


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def declared_outputs(work: Path) -> list[str]:
    """Every output file of every job in the DAG, from a dry run's summary."""
    proc = run_snakemake(work, "--configfile", "presets/tiny.yaml", "--summary", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line.split("\t") for line in proc.stdout.splitlines() if "\t" in line]
    return [cols[0] for cols in lines[1:]]


def test_every_declared_output_exists(tiny_run):
    work, _ = tiny_run
    outputs = declared_outputs(work)
    assert "results/report/report.html" in outputs and "results/report/report.pdf" in outputs
    for out in outputs:
        assert (work / out).exists(), f"missing output {out}"
    # every rule logged and benchmarked
    assert any((work / "logs").rglob("*.log"))
    assert {p.parent.name for p in (work / "benchmarks").rglob("*.tsv")} >= {"forward_mse", "report_html"}


def test_html_is_self_contained_and_valid(tiny_run):
    work, _ = tiny_run
    html = (work / "results/report/report.html").read_text()
    parser = _Collector()
    parser.feed(html)
    tags = parser.tags
    assert html.startswith("<!DOCTYPE html>")
    imgs = [a for t, a in tags if t == "img"]
    assert imgs and all(a["src"].startswith("data:image/") for a in imgs)
    assert not [t for t, _ in tags if t == "script"]
    assert not [a for t, a in tags if t == "link"]
    assert 'id="forward"' in html and 'id="provenance"' in html
    # every figure and table of every section is referred to from the text, by its number
    import re

    ids = re.findall(r'<(?:figure|table) id="((?:fig|tab)-\d+)"', html)
    refs = set(re.findall(r'<a class="xref" href="#((?:fig|tab)-\d+)">', html))
    assert len(ids) > 15 and [i for i in ids if i not in refs] == []
    assert '<section class="answers" id="answers">' in html and html.count("Exercise") >= 5


def test_pdf_is_valid(tiny_run):
    work, _ = tiny_run
    pdf = (work / "results/report/report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    from pypdf import PdfReader

    reader = PdfReader(work / "results/report/report.pdf")
    assert len(reader.pages) >= 3
    text = "".join(page.extract_text() for page in reader.pages)
    assert "Forward diffusion" in text and "Provenance" in text


def test_showcased_edits_are_judged_with_the_evaluations_settings(tiny_run):
    """The tiny preset shows its edits with t2i.eval's steps, guidance and injection (p2p.self_max_tokens
    included), so rule t2i_showcase finds no setting that differs."""
    import pandas as pd

    work, _ = tiny_run
    rows = pd.read_csv(work / "results" / "t2i" / "showcase.csv", keep_default_na=False)
    assert len(rows) and (rows["settings_differ"] == "").all(), rows["settings_differ"].tolist()


def test_noop_rerun_runs_nothing(tiny_run):
    work, _ = tiny_run
    proc = run_snakemake(work, "--configfile", "presets/tiny.yaml", "-n", timeout=300)
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_changing_an_evaluation_setting_reruns_no_model(tiny_run, tmp_path):
    """An evaluation-only key (the reweighting sweep's seeds, the trade-off's fractions) reruns its
    own rule and the report, never the model rule (t2i_train) or the other evaluations."""
    work, _ = tiny_run
    overlay = tmp_path / "eval.yaml"
    overlay.write_text("t2i:\n  reweight_sweep: {seeds: 1}\n  tradeoff: {cross_replace_steps: [0.0, 0.5]}\n")
    proc = run_snakemake(work, "-n", "--configfile", "presets/tiny.yaml", str(overlay), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert job_stats(proc.stdout + proc.stderr) == {"t2i_reweight": 1, "t2i_tradeoff": 1, "report_html": 1, "report_pdf": 1, "all": 1}


def test_lint_is_clean():
    proc = run_snakemake(ROOT, "--lint", timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Lints for" not in out, out


def test_provenance_lists_every_rule_that_ran_before_the_report(tiny_run):
    work, _ = tiny_run
    html = (work / "results/report/report.html").read_text()
    prov = html[html.index('<section id="provenance"'):]
    ran = {p.parent.name for p in (work / "benchmarks").rglob("*.tsv")} - {"report_html", "report_pdf"}
    assert ran
    for rule in ran:
        assert f"<td>{rule}</td>" in prov, rule


# Words of table cells that the browser wrapped onto two lines (cells marked .breakable hold
# hashes, which may wrap anywhere): one range per word, whose boxes must share one line. A line
# may end after a hyphen ("|src-" / "edit|"), as in print, so a word here runs up to one.
CUT_WORDS_JS = """() => {
  const cut = [];
  for (const cell of document.querySelectorAll('td:not(.breakable), th')) {
    const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (const m of node.data.matchAll(/[^\\s-]+-?/g)) {
        const r = document.createRange();
        r.setStart(node, m.index);
        r.setEnd(node, m.index + m[0].length);
        const tops = new Set(Array.from(r.getClientRects()).filter(b => b.width > 0).map(b => Math.round(b.top)));
        if (tops.size > 1) cut.push(m[0]);
      }
    }
  }
  return cut;
}"""


@pytest.mark.browser
def test_report_in_headless_chromium(tiny_run):
    import shutil

    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (make test installs it when run as root)")
    playwright = pytest.importorskip("playwright.sync_api")
    work, _ = tiny_run
    html = work / "results/report/report.html"
    problems = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"],
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1400})
            page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url[:80]}"))
            page.goto(html.as_uri())
            n_images = page.evaluate("document.images.length")
            broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)")
            numbered = page.evaluate("getComputedStyle(document.querySelector('main > section > h2'), '::before').content")
            cut_words, overflow = {}, {}
            for width in (1100, 760):  # a laptop window and a narrow one
                page.set_viewport_size({"width": width, "height": 1400})
                cut_words[width] = page.evaluate(CUT_WORDS_JS)
                overflow[width] = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            page.set_viewport_size({"width": 1100, "height": 1400})
            page.screenshot(path=str(work / "results/report/screenshot.png"), full_page=False)
        finally:
            browser.close()
    assert n_images >= 4
    assert broken == []
    assert problems == []
    assert "counter(section)" in numbered  # the stylesheet applies (section numbers)
    assert cut_words == {1100: [], 760: []}, "table cells wrap inside a word"
    assert overflow == {1100: 0, 760: 0}, "the page scrolls sideways"
    assert (work / "results/report/screenshot.png").stat().st_size > 10_000


@pytest.mark.browser
def test_pdf_pages_and_figures_are_not_blank(tiny_run, tmp_path):
    import shutil
    import subprocess

    import numpy as np
    from PIL import Image
    from pypdf import PdfReader

    if not shutil.which("pdftoppm"):
        pytest.skip("poppler-utils (pdftoppm) is not installed (make test installs it when run as root)")
    work, _ = tiny_run
    pdf = work / "results/report/report.pdf"
    subprocess.run(["pdftoppm", "-r", "30", "-png", str(pdf), str(tmp_path / "page")], check=True, timeout=120)
    pages = sorted(tmp_path.glob("page-*.png"))
    assert 4 <= len(pages) <= 60
    for page in pages:
        arr = np.asarray(Image.open(page).convert("L"), dtype=np.float64)
        assert arr.std() > 2, f"{page.name} looks blank"
    images = [img for page in PdfReader(pdf).pages for img in page.images]
    assert len(images) >= 4
    for img in images:
        arr = np.asarray(img.image.convert("RGB"), dtype=np.float64)
        assert arr.std() > 5, f"figure {img.name} is blank"


def test_pdf_print_rules(tiny_run):
    """The print rules (diffusion_report.report.pagecheck) on the generated PDF: figures inside the
    page body and on their caption's page, no table caption ending a page and no lone table row,
    no page below a third full inside a section, figure text at least 7 pt when printed."""
    from diffusion_report.report import pagecheck

    work, _ = tiny_run
    report = work / "results/report"
    assert pagecheck.check(report / "report.pdf", report / "report.html", work / "report/style.css") == []


def _dry_run_jobs(work: Path, *configfiles: str) -> dict[str, int]:
    proc = run_snakemake(work, "-n", "--configfile", "presets/tiny.yaml", *configfiles, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Job stats:" in out, out[-3000:]
    return job_stats(out)


def test_changing_one_edit_reruns_only_that_edit_and_the_report(tiny_run, tmp_path):
    import yaml

    work, _ = tiny_run
    edits = load_yaml(work / "config.yaml")["p2p"]["edits"]
    edits[1]["target"] = "a green circle on a white background"
    edits[1]["cross_replace_steps"] = {"default": 0.8, "green": 0.4}  # the swapped-in word's window, as t2i.eval's
    overlay = tmp_path / "edit.yaml"
    overlay.write_text(yaml.safe_dump({"p2p": {"edits": edits}}, sort_keys=False))
    jobs = _dry_run_jobs(work, str(overlay))
    # and the attribute reader's verdict on the showcased edits (rule t2i_showcase)
    assert jobs == {"p2p_edit": 1, "p2p_metrics": 1, "t2i_showcase": 1, "report_html": 1, "report_pdf": 1, "all": 1}


def test_changing_ddim_clipping_reruns_sampling_not_training(tiny_run, tmp_path):
    work, _ = tiny_run
    overlay = tmp_path / "clip.yaml"
    overlay.write_text("ddim: {clip_sample: true}\n")
    jobs = _dry_run_jobs(work, str(overlay))
    assert "ddim_train" not in jobs and "forward_mse" not in jobs
    assert jobs["ddim_sample"] == 3 and jobs["ddim_figures"] == 1 and jobs["report_html"] == 1


def test_snakemakes_own_report_lists_the_marked_outputs(tiny_run, tmp_path):
    work, _ = tiny_run
    out = tmp_path / "snakemake_report.html"
    proc = run_snakemake(work, "--configfile", "presets/tiny.yaml", "--report", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = out.read_text(errors="replace")
    for category in ("Forward diffusion", "Report"):
        assert category in html
    assert "grid.png" in html and "report.pdf" in html


def test_replacing_an_image_file_reruns_the_forward_stage(tmp_path):
    """forward.images are inputs: new content at the same path reruns forward_clean (and what
    depends on it), not "Nothing to be done" with a stale report."""
    import numpy as np
    from PIL import Image

    work = copy_workflow(tmp_path / "wf")
    img = work / "mine.png"
    Image.fromarray(np.full((24, 24, 3), 40, np.uint8)).save(img)
    (work / "one.yaml").write_text("forward: {images: [mine.png], image_size: 16, mse_max_t: 20, show_timesteps: [0, 10]}\n")
    targets = ["results/forward/grid.png", "results/forward/mse.csv", "results/forward/mse_curve.png"]
    proc = run_snakemake(work, *targets, "--configfile", "presets/tiny.yaml", "one.yaml", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = run_snakemake(work, *targets, "-n", "--configfile", "presets/tiny.yaml", "one.yaml", timeout=300)
    assert job_stats(proc.stdout) == {}  # up to date
    Image.fromarray(np.full((24, 24, 3), 200, np.uint8)).save(img)  # same path, new content
    proc = run_snakemake(work, *targets, "-n", "--configfile", "presets/tiny.yaml", "one.yaml", timeout=300)
    assert job_stats(proc.stdout) == {"forward_clean": 1, "forward_grid": 1, "forward_mse": 1, "forward_plots": 1}, proc.stdout[-3000:]
    # and the report is downstream of them all (its DAG reaches the image file)
    proc = run_snakemake(work, "results/report/report.html", "-n", "--configfile", "presets/tiny.yaml", "one.yaml",
                         "--forceall", timeout=300)
    assert {"forward_clean", "forward_mse", "report_html"} <= set(job_stats(proc.stdout)), proc.stdout[-3000:]


def test_workflow_runs_as_a_module_of_another_workflow(tmp_path):
    """A two-statement Snakefile in an empty folder uses this workflow as a Snakemake module: its
    config, scripts, environments, shipped models and report sources come from the workflow's
    folder, its results go to the user's folder."""
    outer = tmp_path / "mine"
    outer.mkdir()
    (outer / "Snakefile").write_text(f'module diffusion_report:\n    snakefile: "{ROOT / "Snakefile"}"\n\n'
                                     "use rule * from diffusion_report as dr_*\n")
    targets = ["results/theory/theory.html", "results/ddim/model"]
    proc = run_snakemake(outer, *targets, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "<svg" in (outer / "results/theory/theory.html").read_text()  # report/theory.tex from the workflow
    assert (outer / "results/ddim/model/diffusion_pytorch_model.safetensors").is_file()  # the shipped digits DDPM
    assert "dr_ddim_train" in proc.stdout + proc.stderr
    proc = run_snakemake(outer, "-n", timeout=300)  # the default target: the whole report
    assert proc.returncode == 0 and job_stats(proc.stdout).get("dr_report_html") == 1, proc.stdout[-3000:]
