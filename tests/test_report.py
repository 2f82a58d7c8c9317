"""The report renders from a results folder: sections, numbering, escaping, provenance, same bytes."""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import sys
import time
from datetime import datetime, timezone

import pandas as pd
import pytest
from conftest import ROOT, load_yaml
from test_determinism import strip_measurements

from diffusion_report.core.schedules import Schedule
from diffusion_report.report import latex
from diffusion_report.report import render as report
from diffusion_report.report.sections import forward as forward_section
from diffusion_report.stages import forward as forward_stage
from diffusion_report.stages import theory as theory_stage

TEMPLATES = ROOT / "report" / "templates"
CSS = ROOT / "report" / "style.css"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def fixture_results(tmp_path_factory):
    """A small forward-stage results folder made by the stage's own functions, plus benchmarks."""
    out = tmp_path_factory.mktemp("results")
    cfg = load_yaml(ROOT / "config.yaml")
    cfg["forward"].update(images=["astronaut", "camera"], image_size=16, show_timesteps=[0, 5, 20], mse_max_t=20)
    sched = Schedule.from_config(cfg["schedule"])
    files = {
        "clean": out / "clean.png", "grid": out / "grid.png", "mse": out / "mse.csv",
        "mse_shown": out / "mse_shown.png", "mse_curve": out / "mse_curve.png",
    }
    forward_stage.forward_clean(cfg["forward"]["images"], 16, str(out / "x0.safetensors"), str(files["clean"]))
    forward_stage.forward_grid(str(out / "x0.safetensors"), [0, 5, 20], sched, 0, str(files["grid"]))
    forward_stage.forward_mse(str(out / "x0.safetensors"), 20, sched, 0, str(files["mse"]))
    forward_stage.forward_plots(str(files["mse"]), [0, 5, 20], str(files["mse_shown"]), str(files["mse_curve"]))
    bench = out / "benchmarks"
    for rule in ("forward_clean", "forward_mse", "report_html"):
        (bench / rule).mkdir(parents=True)
        (bench / rule / f"{rule}.tsv").write_text("s\th:m:s\tmax_rss\n1.5\t0:00:01\t123.4\n")
        os.utime(bench / rule / f"{rule}.tsv", (NOW.timestamp() - 100.25,) * 2)  # ended 100.25 s before the report
    flat = {f"forward__{k}": str(v) for k, v in files.items()}
    return out, cfg, flat, bench


def render(tmp_path, cfg, flat, bench, name="report.html", now=NOW):
    out = tmp_path / name
    html = report.report_html(flat, cfg, TEMPLATES, CSS, out, repo=ROOT, bench_dir=bench, now=now)
    return out, html


def test_sections_figures_and_tables_are_numbered(tmp_path, fixture_results):
    _, cfg, flat, bench = fixture_results
    _, html = render(tmp_path, cfg, flat, bench)
    assert re.findall(r'<figure id="fig-(\d+)"', html) == ["1", "2", "3", "4"]
    assert re.findall(r'<table id="tab-(\d+)"', html) == ["1", "2", "3", "4"]
    assert '<a href="#forward">' in html and '<section id="forward">' in html
    assert "<script" not in html and "http://" not in html.replace("http://www.w3.org", "")
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'<img src="([^"]+)"', html))


def test_prose_numbers_come_from_the_results(tmp_path, fixture_results):
    _, cfg, flat, bench = fixture_results
    _, html = render(tmp_path, cfg, flat, bench)
    df = pd.read_csv(flat["forward__mse"])
    last = df.iloc[-1]
    assert f"measured mean MSE is {report.fmt(last['mean'])}" in html
    assert f"expectation {report.fmt(last['expected_mean'])}" in html
    assert f"At t = {int(last['t'])} " in html


def test_hostile_text_is_escaped(tmp_path, fixture_results):
    _, cfg, flat, bench = fixture_results
    cfg = copy.deepcopy(cfg)
    cfg["report"]["title"] = "<script>alert(1)</script> & co"
    _, html = render(tmp_path, cfg, flat, bench)
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in html


def test_disabled_stage_is_left_out(tmp_path, fixture_results):
    _, cfg, _, bench = fixture_results
    _, html = render(tmp_path, cfg, {}, bench)
    assert 'id="forward"' not in html and 'href="#forward"' not in html
    assert '<section id="provenance"' in html


def test_provenance_lists_rules_versions_and_checksums(tmp_path, fixture_results):
    _, cfg, flat, bench = fixture_results
    _, html = render(tmp_path, cfg, flat, bench)
    prov = html[html.index('<section id="provenance"'):]
    for rule in ("forward_clean", "forward_mse", "report_html"):
        assert f"<td>{rule}</td>" in prov
    digest = hashlib.sha256(open(flat["forward__grid"], "rb").read()).hexdigest()
    assert digest in prov
    assert "<td>torch</td>" in prov and "<td>diffusers</td>" in prov
    assert "mse_max_t: 20" in prov  # the effective config
    # the run: total wall time (forward_clean + forward_mse; the report's own rule is left out), date, hardware
    m = lambda text: f'<span class="measured">{text}</span>'  # noqa: E731
    assert f"Report rendered {m('2026-01-02 03:04:05 UTC')}" in prov
    assert f"The {m(2)} jobs of the run took {m('3.0 s')} of wall time in all" in prov
    assert f"{m('1 min 42 s')} passed from the earliest job start ({m('2026-01-02 03:02:23 UTC')})" in prov
    assert f"CPU {m(report.cpu_model())}; GPU {m(report.gpu_model())}" in prov
    # every artifact by its full path, none twice
    paths = re.findall(r"<tr><td>forward</td><td>([^<]+)</td>", prov)
    assert sorted(paths) == sorted(["clean.png", "grid.png", "mse.csv", "mse_shown.png", "mse_curve.png"])


def test_run_dependent_text_is_marked_measured(tmp_path, fixture_results, monkeypatch):
    """Renders at other times, on other hardware, after other job times differ only in measured spans."""
    _, cfg, flat, bench = fixture_results
    _, a = render(tmp_path, cfg, flat, bench, "a.html", now=NOW)
    other = tmp_path / "bench_other"
    for tsv in bench.glob("*/*.tsv"):
        (other / tsv.parent.name).mkdir(parents=True, exist_ok=True)
        (other / tsv.parent.name / tsv.name).write_text("s\th:m:s\tmax_rss\n4000.3\t1:06:40\t99.5\n")
    monkeypatch.setattr(report, "cpu_model", lambda: "Other CPU (64 logical CPUs)")
    monkeypatch.setattr(report, "gpu_model", lambda: "8 x Some GPU")
    _, b = render(tmp_path, cfg, flat, other, "b.html", now=datetime(2027, 6, 7, 8, 9, 10, tzinfo=timezone.utc))
    assert a != b and "2 h 13 min 21 s" in b and "2 h 13 min 21 s" not in a and "8 x Some GPU" in b
    assert strip_measurements(a) == strip_measurements(b)


def test_run_times_from_benchmark_files(tmp_path):
    bench = tmp_path / "benchmarks"
    end = NOW.timestamp()
    for rule, job, secs, ended in [("a", "a", [10.0], end - 100), ("b", "1", [5.0, 7.0], end - 50),
                                   ("report_html", "report_html", [3.0], end - 5000), ("c", "empty", [], end)]:
        (bench / rule).mkdir(parents=True, exist_ok=True)
        tsv = bench / rule / f"{job}.tsv"
        tsv.write_text("s\th:m:s\n" + "".join(f"{x}\t0:00:00\n" for x in secs))
        os.utime(tsv, (ended, ended))
    run = report.run_times(bench, NOW)
    assert run["n_jobs"] == 2 and run["total_s"] == pytest.approx(22.0) and run["total"] == "22.0 s"
    assert run["span_s"] == pytest.approx(110.0)  # job a started at end - 100 - 10
    assert run["start"] == "2026-01-02 03:02:15 UTC" and run["date"] == "2026-01-02 03:04:05 UTC"
    assert report.run_times(tmp_path / "none", NOW) == {"n_jobs": 0, "date": "2026-01-02 03:04:05 UTC"}
    assert [report.duration_text(x) for x in (0.04, 59.94, 61, 3723.4)] == ["0.0 s", "59.9 s", "1 min 01 s", "1 h 02 min 03 s"]


def test_artifact_paths_are_full_and_distinct(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = ["results/ddim/eta0/side_by_side.png", "results/ddim/eta1/side_by_side.png", "results/p2p/x/side_by_side.png"]
    assert report.artifact_paths(rel, ".") == rel
    assert report.artifact_paths([str(tmp_path / r) for r in rel], ".") == rel  # absolute inside the working directory
    elsewhere = tmp_path.parent / "elsewhere"
    assert report.artifact_paths([str(elsewhere / "r" / "a" / "f.png"), str(elsewhere / "r" / "b" / "f.png"), rel[0]],
                                 str(tmp_path)) == ["a/f.png", "b/f.png", rel[0]]


def test_cpu_and_gpu_models(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Example CPU @ 2.0GHz\n\nprocessor\t: 1\nmodel name\t: Example CPU @ 2.0GHz\n")
    assert report.cpu_model(info) == "Example CPU @ 2.0GHz (2 logical CPUs)"
    assert report.cpu_model(tmp_path / "missing")  # falls back to the platform, never empty
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-1234)'\necho '  MIG 1g.18gb Device 0: (UUID: MIG-5)'\n"
                   "echo 'GPU 1: NVIDIA H200 (UUID: GPU-5678)'\n")
    smi.chmod(0o755)
    monkeypatch.setattr(report.shutil, "which", lambda name: str(smi) if name == "nvidia-smi" else None)
    assert report.gpu_model() == "2 x NVIDIA H200"
    # no nvidia-smi and torch not imported: "none", and torch is not imported to find out
    monkeypatch.setattr(report.shutil, "which", lambda name: None)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    assert report.gpu_model() == "none" and "torch" not in sys.modules
    assert "import torch" not in (ROOT / "scripts/diffusion_report/report/render.py").read_text()


def test_rendering_twice_gives_identical_bytes(tmp_path, fixture_results):
    _, cfg, flat, bench = fixture_results
    a, _ = render(tmp_path, cfg, flat, bench, "a.html")
    b, _ = render(tmp_path, cfg, flat, bench, "b.html")
    assert a.read_bytes() == b.read_bytes()
    report.report_pdf(a, tmp_path / "a.pdf")
    time.sleep(1.1)  # embedded font subsets carry a timestamp in seconds: the two prints must not share one
    report.report_pdf(b, tmp_path / "b.pdf")
    pa, pb = (tmp_path / "a.pdf").read_bytes(), (tmp_path / "b.pdf").read_bytes()
    assert pa.startswith(b"%PDF-") and pa == pb


def test_fmt():
    assert report.fmt(0.0001) == "0.0001"
    assert report.fmt(1.07364) == "1.074"
    assert report.fmt(3) == "3"
    assert report.fmt(float("nan")) == "n/a"
    assert report.fmt(123456.0) == "1.235e+05"
    from markupsafe import Markup

    cell = Markup('<span class="math inline"><svg></svg></span>')
    assert report.fmt(cell) is cell  # typeset notation in a table cell stays markup


UNICORN = "\N{UNICORN FACE}"


def _emoji_config(cfg):
    cfg = copy.deepcopy(cfg)
    cfg["p2p"]["edits"][0]["source"] = f"a red {UNICORN} on a white background"
    return cfg


def _glyph_note(html):
    m = re.search(r'<div class="note warning" id="missing-glyphs">(.*?)</div>', html, re.S)
    return m.group(1) if m else None


def test_a_prompt_with_an_emoji_no_font_draws_is_listed_in_the_report(tmp_path, fixture_results, monkeypatch):
    """A prompt's emoji that no installed font has: a visible note lists it by code point and name
    (in the HTML and so in the PDF printed from it), instead of blank boxes and a log line."""
    _, cfg, flat, bench = fixture_results
    fonts = report.drawable_codepoints()
    if fonts is None:
        pytest.skip("no fc-list (fontconfig)")
    monkeypatch.setattr(report, "drawable_codepoints", lambda: fonts - {ord(UNICORN)})
    out, html = render(tmp_path, _emoji_config(cfg), flat, bench)
    assert f"a red {UNICORN} on a white background" in html  # the prompt, in the effective config
    note = _glyph_note(html)
    assert note and "U+1F984 UNICORN FACE" in note and "blank boxes" in note, note
    # the note is printed: its words are in the PDF's first page
    from pypdf import PdfReader

    report.report_pdf(out, tmp_path / "report.pdf")
    first_page = " ".join(PdfReader(tmp_path / "report.pdf").pages[0].extract_text().split())
    assert "U+1F984 UNICORN FACE" in first_page and "Missing glyphs" in first_page


def test_emoji_with_the_fonts_installed_here(tmp_path, fixture_results):
    """The same prompt against the fonts of this machine: the note appears exactly when no font has the emoji."""
    _, cfg, flat, bench = fixture_results
    fonts = report.drawable_codepoints()
    if fonts is None:
        pytest.skip("no fc-list (fontconfig)")
    _, html = render(tmp_path, _emoji_config(cfg), flat, bench)
    note = _glyph_note(html) or ""
    assert ("U+1F984 UNICORN FACE" in note) == (ord(UNICORN) not in fonts), note


def test_no_glyph_note_when_every_character_has_a_font(tmp_path, fixture_results, monkeypatch):
    _, cfg, flat, bench = fixture_results
    cfg = _emoji_config(cfg)
    cfg["p2p"]["edits"][1]["source"] = "a red circle on a white background \N{VARIATION SELECTOR-16}\N{ZERO WIDTH JOINER}"
    monkeypatch.setattr(report, "drawable_codepoints", lambda: set(range(0x20, 0x30000)))
    _, html = render(tmp_path, cfg, flat, bench)
    assert _glyph_note(html) is None
    monkeypatch.setattr(report, "drawable_codepoints", lambda: None)  # no fontconfig: no check, no note
    _, html = render(tmp_path, cfg, flat, bench)
    assert _glyph_note(html) is None


def test_visible_text_leaves_out_markup_styles_and_image_data():
    page = ('<style>p::before { content: "\u2603"; }</style><p title="\u2602">a &amp; b &#x1F984;</p>'
            '<img src="data:image/png;base64,\u2601">')
    assert report.visible_text(page).split() == ["a", "&", "b", UNICORN]
    assert report.undrawable_characters("a\u00e9 \u200d\ufe0f" + UNICORN, {ord("a"), 0xE9}) == [UNICORN]


def test_answers_up_front_link_each_section_and_quote_its_numbers(tmp_path, fixture_results):
    _, cfg, flat, bench = fixture_results
    _, html = render(tmp_path, cfg, flat, bench)
    answers = html[html.index('<section class="answers" id="answers">'):html.index('<nav class="toc">')]
    ctx = forward_section.report_context({k.split("__")[1]: v for k, v in flat.items()}, cfg)
    assert '<a href="#forward">Exercise 3</a>' in answers
    assert f"{report.fmt(ctx['mse_last'], 3)} at t = {ctx['t_max']}" in answers
    assert "presets/hw4.yaml" in answers  # the embedded models are used, so it says how to run the homework's
    assert answers.index("Answers at a glance") < html.index('<section id="forward">')


def test_answer_sentences_follow_the_numbers():
    """Each answer's claim is chosen from the metrics, threshold beside it: contrary numbers flip it."""
    from diffusion_report.report.sections import ddim as ddim_section
    from diffusion_report.report.sections import p2p as p2p_section
    from diffusion_report.report.sections import t2i as t2i_section
    from diffusion_report.report.sections import theory as theory_section

    fwd = {"rows": [{"t": 0, "mean": 0.0}, {"t": 10, "mean": 0.002}], "t_max": 500, "mse_last": 1.07, "expected_last": 1.07,
           "max_rel_dev": 0.01, "names": ["a", "b"], "image_size": 32, "schedule": {"kind": "linear", "T": 1000}}
    assert "stays within 1% of its closed-form expectation (threshold 5%)" in " ".join(forward_section.answer(fwd, {})["sentences"])
    assert "deviates from its closed-form expectation by up to 20%" in " ".join(
        forward_section.answer({**fwd, "max_rel_dev": 0.2}, {})["sentences"])

    dd = {"source": "train", "pretrained": "", "reference_steps": 1000, "step_counts": [5, 50, 1000], "num_samples": 8,
          "eta": 0.0, "ddpm": None, "steps_ssim_09": 50, "fewest_steps": 5}
    assert "From S = 50 on, the samples are within SSIM 0.9" in " ".join(ddim_section.answer(dd, {})["sentences"])
    assert "No step count below 1000 comes within SSIM 0.9" in " ".join(
        ddim_section.answer({**dd, "steps_ssim_09": None}, {})["sentences"])
    assert "<sub>T</sub>" in str(ddim_section.answer(dd, {})["sentences"][0])  # typeset, not "x_T"

    p2p = {"n_edits": 2, "model": "m", "n_compared": 2, "n_closer": 1, "median_ratio": 0.5, "mask_threshold": 0.3,
           "rows": [{"mask": "attention", "mask fraction": 0.4}, {"mask": "local_blend", "mask fraction": 1.0}]}
    assert "1 of 2 edited images stay closer" in " ".join(p2p_section.answer(p2p, {})["sentences"])
    judged = " ".join(p2p_section.answer({**p2p, "showcase": {"judged": 2, "succeeded": 2}}, {})["sentences"])
    assert "2 of the 2 edits it can judge succeed" in judged and "failures" not in judged
    assert "the failures are shown as failures" in " ".join(p2p_section.answer({**p2p, "showcase": {"judged": 2, "succeeded": 1}}, {})["sentences"])
    whole = " ".join(p2p_section.answer({**p2p, "n_compared": 0, "median_ratio": None}, {})["sentences"])
    assert "not measured here: in 1 of 2 edits" in whole and "attention or local blend" in whole

    comps = [{"edit": "shape_swap", "n": 4, "p2p_success": 0.75, "baseline_success": 0.5},
             {"edit": "refine_big", "n": 4, "p2p_success": 0.25, "baseline_success": 0.5}]
    t = " ".join(t2i_section.answer({"comparisons": comps, "n_edits": 2, "n_better_iou": 2, "n_better_success": 1}, {})["sentences"])
    assert "in 2 of 2 edit types" in t and "more often in 1 of 2" in t and "weakest edit type is refine_big: 25%" in t
    assert "are met by" not in t  # no goal count given: no sentence about it
    goals = {"n_goals": 1, "n_goal_types": 2, "goal_comparisons": [dict(comps[0], goals={"all": True}), dict(comps[1], goals={"all": False})]}
    t = " ".join(t2i_section.answer({"comparisons": comps, "n_edits": 2, "n_better_iou": 2, "n_better_success": 1, **goals}, {})["sentences"])
    assert "are met by 1 of the 2 word-swap and refinement edit types (shape_swap)." in t
    t = " ".join(t2i_section.answer({"comparisons": comps, "n_edits": 2, "n_better_iou": 2, "n_better_success": 1, **goals, "n_goals": 0}, {})["sentences"])
    assert "are met by 0 of the 2 word-swap and refinement edit types." in t

    th = {"eq": {"eq-closed-form": "(3)", "eq-mu-theta": "(15)"}, "n_passed": 10, "n_checks": 10, "n_identities": 4,
          "schedule": {"kind": "linear", "T": 1000}}
    text = " ".join(theory_section.answer(th, {})["sentences"])
    assert "in one step is eq. (3)" in text and "predicted noise is eq. (15)" in text and text.count("All 10 numerical checks")
    assert "Only 9 of 10" in " ".join(theory_section.answer({**th, "n_passed": 9}, {})["sentences"])


def referenced(html: str) -> tuple[list[str], set[str]]:
    """(every figure and table id, the ids the text links to)."""
    ids = re.findall(r'<(?:figure|table) id="((?:fig|tab)-\d+)"', html)
    return ids, set(re.findall(r'<a class="xref" href="#((?:fig|tab)-\d+)">', html))


def test_every_figure_and_table_is_referenced_from_the_text(tmp_path, fixture_results):
    _, cfg, flat, bench = fixture_results
    _, html = render(tmp_path, cfg, flat, bench)
    ids, refs = referenced(html)
    assert ids and [i for i in ids if i not in refs] == []
    # the link says the number it points to, also for a figure that comes after the sentence
    assert re.search(r'<a class="xref" href="#fig-2">Figure 2</a>', html)
    assert "<sub>0</sub> after cropping" in html  # captions typeset notation like the body


def test_references_resolve_forward_and_a_missing_one_fails():
    num = report.Numbering()
    assert str(num.ref("late")) == '<span class="xref-missing">[late]</span>'  # first pass: not seen yet
    num.next("figure", "early")
    num.next("table", "late")
    num.restart()
    assert str(num.ref("late")) == '<a class="xref" href="#tab-1">Table 1</a>'
    assert str(num.ref("early")) == '<a class="xref" href="#fig-1">Figure 1</a>'
    num.next("figure", "x")
    num.next("figure", "x")
    assert num.duplicates == {"x"}  # report_html stops on it


def test_a_reference_to_a_missing_figure_stops_the_report(tmp_path, fixture_results):
    _, cfg, flat, bench = fixture_results
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    forward = templates / "sections" / "forward.html.j2"
    forward.write_text(forward.read_text().replace('{{ ref("fwd-grid") }}', '{{ ref("no-such-figure") }}'))
    with pytest.raises(ValueError, match="not in it: no-such-figure"):
        report.report_html(flat, cfg, templates, CSS, tmp_path / "r.html", repo=ROOT, bench_dir=bench, now=NOW)
    assert not (tmp_path / "r.html").exists()


@pytest.fixture(scope="module")
def theory_results(tmp_path_factory, fixture_results):
    """The forward fixture plus a theory section: theory.tex rendered by the theory_render rule's function
    (body and reference list), a small run of the checks and their parameters."""
    _, cfg, flat, bench = fixture_results
    out = tmp_path_factory.mktemp("theory")
    latex.theory_render(str(ROOT / "report" / "theory.tex"), str(out / "theory.html"),
                        str(ROOT / "report" / "references.bib"), str(out / "references.html"))
    schedule = Schedule.from_config(cfg["schedule"])
    theory_stage.run_checks(schedule, [1, 100], 200, seed=0).to_csv(out / "checks.csv", index=False)
    params = theory_stage.check_parameters(schedule, cfg["schedule"], {"mc_samples": 200})
    (out / "params.json").write_text(__import__("json").dumps(params))
    files = {"html": "theory.html", "refs": "references.html", "checks": "checks.csv", "params": "params.json"}
    return cfg, {**{f"theory__{k}": str(out / v) for k, v in files.items()}, **flat}, bench


def main_sections(html: str) -> list[str]:
    """The ids of the report's top-level sections, in order."""
    main = html[html.index("<main>"):html.index("</main>")]
    return re.findall(r'^<section id="([^"]+)"', main, re.M)


def test_references_are_the_last_section_in_the_contents_and_citations_resolve(tmp_path, theory_results):
    cfg, flat, bench = theory_results
    _, html = render(tmp_path, cfg, flat, bench)
    # its own section after the last exercise, before the provenance appendix; listed in the contents
    assert main_sections(html) == ["theory", "forward", "references", "provenance"]
    toc = re.findall(r'<li><a href="#([^"]+)">', html[html.index('<nav class="toc">'):html.index("</nav>")])
    assert toc == ["theory", "forward", "references", "provenance"]
    refs = html[html.index('<section id="references">'):html.index('<section id="provenance"')]
    assert "<h2>References</h2>" in refs and refs.count('class="csl-entry"') == 5
    theory = html[html.index('<section id="theory">'):html.index('<section id="forward">')]
    assert "csl-entry" not in theory and ">References<" not in theory  # no longer in the middle
    # every citation links to an entry of the list, and no in-page link of the report dangles
    cited = re.findall(r'<a href="#([^"]+)" role="doc-biblioref">', theory)
    entries = set(re.findall(r'<div id="([^"]+)" class="csl-entry"', refs))
    assert len(cited) >= 10 and set(cited) == entries
    assert report.broken_links(html) == []
    # the theory section without citations (or disabled): no References section, no entry in the contents
    _, plain = render(tmp_path, cfg, {k: v for k, v in flat.items() if not k.startswith("theory__")}, bench, "plain.html")
    assert 'id="references"' not in plain and 'href="#references"' not in plain


def test_citation_links_work_in_the_pdf(tmp_path, theory_results):
    """WeasyPrint turns each citation into a link annotation to a named destination on the References page."""
    from pypdf import PdfReader

    cfg, flat, bench = theory_results
    out, html = render(tmp_path, cfg, flat, bench)
    report.report_pdf(out, tmp_path / "report.pdf")
    reader = PdfReader(tmp_path / "report.pdf")
    dests = {name: reader.get_destination_page_number(d) for name, d in reader.named_destinations.items()}
    text = [" ".join(p.extract_text().split()) for p in reader.pages]
    refs_page = next(i for i, t in enumerate(text) if t.startswith("References") or " References Hertz" in t)
    links = []
    for page in reader.pages:
        for annot in page.get("/Annots") or []:
            a = annot.get_object()
            if a.get("/Subtype") == "/Link" and "/Dest" in a:
                links.append(str(a["/Dest"]))
    cites = [d for d in links if d.startswith("theory-ref-")]
    assert len(cites) >= 10 and set(cites) == set(re.findall(r'<div id="(theory-ref-[^"]+)" class="csl-entry"', html))
    assert all(dests[d] == refs_page for d in cites)
    assert all(d in dests for d in links)  # every internal link of the PDF has its destination


def test_a_dangling_link_stops_the_report(tmp_path, fixture_results):
    _, cfg, flat, bench = fixture_results
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    forward = templates / "sections" / "forward.html.j2"
    forward.write_text(forward.read_text().replace("</section>", '<a href="#nowhere">x</a></section>', 1))
    with pytest.raises(ValueError, match="links to anchors that are not in it: nowhere"):
        report.report_html(flat, cfg, templates, CSS, tmp_path / "r.html", repo=ROOT, bench_dir=bench, now=NOW)
    assert not (tmp_path / "r.html").exists()
    assert report.broken_links('<a href="#a">a</a><p id="a"></p><a href="#b">') == ["b"]


def test_theory_table_cells_are_typeset_math(tmp_path, theory_results):
    """The checks table writes identities like the body: inline SVG with the TeX as text alternative,
    no ASCII sqrt( or abar; the same bytes twice."""
    cfg, flat, bench = theory_results
    a, html = render(tmp_path, cfg, flat, bench, "a.html")
    b, _ = render(tmp_path, cfg, flat, bench, "b.html")
    assert a.read_bytes() == b.read_bytes()
    theory = html[html.index('<h3 id="theory-checks">'):html.index('<section id="forward">')]
    cells = re.findall(r"<tr><td>(.*?)</td>", theory, re.S)
    assert len(cells) > 15
    for cell in cells:
        assert '<span class="math inline"><svg role="img" aria-label="' in cell and "<title>" in cell
        text = re.sub(r"<[^>]+>", "", re.sub(r"<svg.*?</svg>", "", cell, flags=re.S))
        assert "sqrt(" not in text and "abar" not in text and "x0" not in text and "_t" not in text, text
    assert r'aria-label="= \sqrt{\bar\alpha_t}"' in theory
    assert "<img" not in theory  # inline vector math, nothing fetched


def test_forward_formulas_are_typeset_math(tmp_path, fixture_results):
    """Roots and bars go through the math renderer (SVG with its TeX), not HTML entities (a Latin ā, a bare √)."""
    _, cfg, flat, bench = fixture_results
    _, html = render(tmp_path, cfg, flat, bench)
    fwd = html[html.index('<section id="forward">'):html.index('<section id="provenance"')]
    text = report.visible_text(re.sub(r"<svg.*?</svg>", "", fwd, flags=re.S))
    assert "\u221a" not in text and "\u0101" not in text and "sqrt" not in text
    assert r'aria-label="x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\, \varepsilon"' in fwd
    assert fwd.count('<span class="math inline"><svg role="img"') == 2
