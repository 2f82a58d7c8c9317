"""The report renders from a results folder: sections, numbering, escaping, provenance, same bytes."""

from __future__ import annotations

import copy
import hashlib
import re
import time

import pandas as pd
import pytest

from conftest import ROOT, load_yaml
from diffusion_report import forward, report
from diffusion_report.schedules import Schedule

TEMPLATES = ROOT / "report" / "templates"
CSS = ROOT / "report" / "style.css"


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
    forward.save_clean(cfg["forward"]["images"], 16, str(out / "x0.safetensors"), str(files["clean"]))
    forward.make_grid_figure(str(out / "x0.safetensors"), [0, 5, 20], sched, 0, str(files["grid"]))
    forward.write_mse_table(str(out / "x0.safetensors"), 20, sched, 0, str(files["mse"]))
    forward.make_mse_plots(str(files["mse"]), [0, 5, 20], str(files["mse_shown"]), str(files["mse_curve"]))
    bench = out / "benchmarks"
    for rule in ("forward_clean", "forward_mse", "report_html"):
        (bench / rule).mkdir(parents=True)
        (bench / rule / f"{rule}.tsv").write_text("s\th:m:s\tmax_rss\n1.5\t0:00:01\t123.4\n")
    flat = {f"forward__{k}": str(v) for k, v in files.items()}
    return out, cfg, flat, bench


def render(tmp_path, cfg, flat, bench, name="report.html"):
    out = tmp_path / name
    html = report.render_html(flat, cfg, TEMPLATES, CSS, out, repo=ROOT, bench_dir=bench)
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


def test_rendering_twice_gives_identical_bytes(tmp_path, fixture_results):
    _, cfg, flat, bench = fixture_results
    a, _ = render(tmp_path, cfg, flat, bench, "a.html")
    b, _ = render(tmp_path, cfg, flat, bench, "b.html")
    assert a.read_bytes() == b.read_bytes()
    report.render_pdf(a, tmp_path / "a.pdf")
    time.sleep(1.1)  # embedded font subsets carry a timestamp in seconds: the two prints must not share one
    report.render_pdf(b, tmp_path / "b.pdf")
    pa, pb = (tmp_path / "a.pdf").read_bytes(), (tmp_path / "b.pdf").read_bytes()
    assert pa.startswith(b"%PDF-") and pa == pb


def test_fmt():
    assert report.fmt(0.0001) == "0.0001"
    assert report.fmt(1.07364) == "1.074"
    assert report.fmt(3) == "3"
    assert report.fmt(float("nan")) == "n/a"
    assert report.fmt(123456.0) == "1.235e+05"


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

    report.render_pdf(out, tmp_path / "report.pdf")
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
