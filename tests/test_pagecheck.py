"""The report's print-rule checker (diffusion_report.report.pagecheck) on PDFs made to break each
rule, printed by WeasyPrint with the report's own stylesheet."""

from __future__ import annotations

import base64
import io

import pytest

pytest.importorskip("pdfplumber")
weasyprint = pytest.importorskip("weasyprint")

from diffusion_report.report import pagecheck  # noqa: E402
from diffusion_report.testing import ROOT  # noqa: E402

CSS = (ROOT / "report" / "style.css").read_text()


def png(width_px: int, height_px: int, min_font: str | None = "9", dpi: str = "100") -> str:
    """A data URI of a grey PNG carrying (or not) the font record of io.save_figure."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if min_font is not None:
        info.add_text("min-font-pt", min_font)
        info.add_text("figure-dpi", dpi)
    buf = io.BytesIO()
    Image.new("RGB", (width_px, height_px), (90, 120, 200)).save(buf, format="PNG", pnginfo=info)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def figure(n: int, uri: str, style: str = "") -> str:
    return (f'<figure style="{style}"><img src="{uri}" alt="x">'
            f'<figcaption><span class="label">Figure {n}.</span> A caption.</figcaption></figure>')


def table(n: int, rows: int) -> str:
    body = "".join(f"<tr><td>row {i}</td><td class='num'>{i}</td></tr>" for i in range(rows))
    return (f'<table><caption><span class="label">Table {n}.</span> A table.</caption>'
            f"<thead><tr><th>name</th><th>value</th></tr></thead><tbody>{body}</tbody></table>")


def section(title: str, inner: str) -> str:
    return f"<section><h2>{title}</h2>{inner}</section>"


PARA = "<p>" + "Text of a paragraph that fills lines on the page. " * 12 + "</p>"


def check(tmp_path, html_body: str, css: str = CSS) -> list[str]:
    html = f"<!doctype html><html><head><style>{css}</style></head><body><main>{html_body}</main></body></html>"
    (tmp_path / "r.html").write_text(html)
    weasyprint.HTML(string=html, base_url=str(tmp_path)).write_pdf(tmp_path / "r.pdf")
    (tmp_path / "style.css").write_text(CSS)
    return pagecheck.check(tmp_path / "r.pdf", tmp_path / "r.html", tmp_path / "style.css")


def test_a_well_laid_out_document_passes(tmp_path):
    body = section("1. One", PARA * 3 + figure(1, png(600, 300)) + PARA + table(1, 6) + PARA * 6)
    body += section("2. Two", PARA * 2 + figure(2, png(500, 400)) + PARA * 5)
    assert check(tmp_path, body) == []


def test_a_figure_taller_than_the_page_body(tmp_path):
    body = section("1. One", figure(1, png(600, 300), style="") .replace('alt="x"', 'alt="x" style="height: 30cm; max-height: none"'))
    problems = check(tmp_path, body)
    assert any("figure 1 runs past the page body" in p for p in problems), problems


def test_a_caption_on_the_next_page(tmp_path):
    tall = figure(1, png(600, 300), style="break-inside: auto").replace('alt="x"', 'alt="x" style="height: 24.8cm; width: auto; max-height: none"')
    problems = check(tmp_path, section("1. One", tall + PARA * 4))
    assert any(p.startswith("figure 1: image on page 2, caption on page 3") for p in problems), problems
    # the heading left alone on page 1 is a page below a third
    assert any(p.startswith("page 1:") and "full" in p for p in problems), problems


def test_a_page_below_a_third_inside_a_section(tmp_path):
    body = section("1. One", PARA + '<div style="break-before: page"></div>' + PARA * 8) + section("2. Two", PARA * 8)
    problems = check(tmp_path, body)
    assert any(p.startswith("page 1:") and "full" in p for p in problems), problems
    # the same short page before a new section is allowed
    assert check(tmp_path, section("1. One", PARA) + section("2. Two", PARA * 8)) == []


def _rows_per_page(tmp_path) -> list[int]:
    """Thin full-width rules (table body rows) per page, counted straight from the PDF."""
    import pdfplumber

    with pdfplumber.open(str(tmp_path / "r.pdf")) as pdf:
        return [len({round(ln["top"]) for ln in page.lines if ln["linewidth"] < 1.2}) for page in pdf.pages]


# the report's stylesheet without its rules against lone rows, to make some
ROWS_MAY_BE_ALONE = CSS + "\ntbody tr:first-child, tbody tr:last-child { break-after: auto; break-before: auto; }\n"


def test_a_table_split_with_a_lone_row(tmp_path):
    """More and more rows after half a page of text: the first count that leaves exactly one row
    on page 2 is flagged; one that leaves several on each page is not."""
    lone, fine = None, None
    for rows in range(5, 60):
        problems = check(tmp_path, section("1. One", PARA * 3 + table(1, rows)), css=ROWS_MAY_BE_ALONE)
        per_page = _rows_per_page(tmp_path)
        if len(per_page) == 2 and per_page[0] >= 2 and per_page[1] == 1 and lone is None:
            lone = problems
        if len(per_page) == 2 and min(per_page) >= 3:
            fine = problems
            break
    assert lone is not None and fine is not None
    assert any("page 2: a table split over pages 1-2 keeps 1 body row(s)" in p for p in lone), lone
    assert not any("body row" in p for p in fine), fine


def test_the_reports_stylesheet_leaves_no_lone_row(tmp_path):
    """With report/style.css, no row count leaves a table's first or last row alone on a page."""
    counts = []
    for rows in range(14, 24):
        assert not any("body row" in p for p in check(tmp_path, section("1. One", PARA * 3 + table(1, rows)))), rows
        counts.append(tuple(_rows_per_page(tmp_path)))
    assert any(len(c) == 2 for c in counts)  # some of them do split the table


def test_figure_text_too_small_when_printed(tmp_path):
    # 9 pt text in a figure 20 in wide (2000 px at 100 dpi) is printed 482 pt wide: 3 pt
    problems = check(tmp_path, section("1. One", figure(1, png(2000, 600)) + PARA * 8))
    assert any("figure 1" in p and "prints at 3.0 pt" in p for p in problems), problems
    # the same text in a figure 6 in wide is printed at its own size or larger
    assert check(tmp_path, section("1. One", figure(1, png(600, 180)) + PARA * 8)) == []
    # a figure without text is fine at any size; one without the record is named
    assert check(tmp_path, section("1. One", figure(1, png(2000, 600, "none")) + PARA * 8)) == []
    problems = check(tmp_path, section("1. One", figure(1, png(600, 180, None)) + PARA * 8))
    assert any("no font record" in p for p in problems), problems


def test_save_figure_records_the_smallest_drawn_font(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from diffusion_report.io import save_figure

    fig, (a, b) = plt.subplots(1, 2, figsize=(4, 2), dpi=100)
    a.plot([0, 1], [0, 1])
    a.tick_params(labelsize=6.5)
    a.set_title("t", fontsize=11)
    b.axis("off")
    b.tick_params(labelsize=3)  # hidden axes: their tick labels are not drawn
    save_figure(tmp_path / "f.png", fig)
    info = Image.open(tmp_path / "f.png").info
    assert info["min-font-pt"] == "6.5" and info["figure-dpi"] == "100"
    fig2, ax = plt.subplots()
    ax.axis("off")
    save_figure(tmp_path / "g.png", fig2)
    assert Image.open(tmp_path / "g.png").info["min-font-pt"] == "none"


def test_figures_at_the_default_configs_sizes_print_text_at_7pt(tmp_path):
    """Each figure function, fed the default config's counts (64 DDIM samples in 7 rows, 16
    reconstructions, 8x8 text-to-image samples, 10 evaluation examples, 5 forward images at 5
    timesteps, three prompts side by side), prints its smallest text at >= 7 pt."""
    import numpy as np
    import pandas as pd
    import torch

    from diffusion_report import figures
    from diffusion_report.io import save_figure
    from diffusion_report.stages import ddim, ddim_experiments, p2p, t2i

    g = torch.Generator().manual_seed(0)
    digits = torch.rand(64, 1, 16, 16, generator=g) * 2 - 1
    rgb16 = [torch.rand(3, 16, 16, generator=g) * 2 - 1 for _ in range(8)]
    out = {}

    def saved(name, fig):
        save_figure(tmp_path / name, fig)
        figures.close(fig)
        out[name] = tmp_path / name

    saved("ddim_grid.png", ddim._grid_figure([(f"DDIM S = {s}", digits) for s in (5, 10, 20, 50, 100, 1000)] + [("DDPM", digits)]))
    saved("recon.png", figures.image_grid([list(digits[:16])] + [list(digits[:16])] * 5, row_labels=["input"] + [f"S = {s}" for s in (10, 20, 50, 100, 1000)], cell_inches=0.55))
    saved("interp.png", figures.image_grid([list(digits[:9])] * 4, col_labels=[f"{a:.2g}" for a in np.linspace(0, 1, 9)], cell_inches=0.55))
    saved("fwd_grid.png", figures.image_grid([list(torch.rand(5, 3, 128, 128, generator=g))] * 5, row_labels=["astronaut"] * 5, col_labels=[f"t = {t}" for t in (0, 10, 50, 100, 500)]))
    rows = [{"variant": v, "steps": s, "fd": 10.0 + s / 100, "fd_boot_std": 1.0} for v in ("eta=0", "eta=0.2", "eta=0.5", "eta=1", "sigma_hat") for s in (10, 20, 50, 100, 1000)]
    saved("quality.png", ddim_experiments.quality_figure(pd.DataFrame(rows + [{"variant": "real digits", "steps": 0, "fd": 9.0, "fd_boot_std": 1.0}]),
                                                          ["eta=0", "eta=0.2", "eta=0.5", "eta=1", "sigma_hat"]))
    conv = pd.DataFrame([{"sampler": "ddim", "label": f"ddim_{s}", "steps": s, "eta": 0.0, "mse": 1 / s, "ssim": 1 - 1 / s,
                          "recognisability": 0.9} for s in (5, 10, 20, 50, 100, 1000)]
                        + [{"sampler": "ddpm", "label": "ddpm", "steps": 1000, "eta": 1.0, "mse": 0.1, "ssim": 0.5, "recognisability": 0.95}])
    saved("convergence.png", ddim._convergence_figure(conv, "ddim_1000"))
    caption = "a big yellow triangle on a black background"
    t2i.image_grid_figure(tmp_path / "samples.png", [rgb16] * 8, [caption] * 8)
    t2i.image_grid_figure(tmp_path / "examples.png", [rgb16[:3]] * 10, [f"refine_big #1\n{caption}\n-> {caption}"] * 10,
                          ["source", "prompt-to-prompt", "no control"], cell=1.0)
    img = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    p2p.side_by_side_figure(tmp_path / "side.png", [img] * 3, [f"source: {caption}", f"replace: {caption}", f"no control: {caption}"])
    out.update({n: tmp_path / n for n in ("samples.png", "examples.png", "side.png")})
    small = {name: round(pagecheck.printed_font_pt(path), 2) for name, path in out.items()}
    assert all(v >= pagecheck.MIN_FIGURE_FONT_PT for v in small.values()), small
