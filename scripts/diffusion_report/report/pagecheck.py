"""Print rules of the report, checked on the generated PDF (and the HTML it was printed from).

The PDF is read with pdfplumber (text with positions and sizes, images with their boxes, table
rules as line segments), so the check sees what the reader sees, not what the stylesheet asks for:

1. every image lies inside the page body (the @page margins of ``report/style.css``);
2. figure n's caption is on the page of its image (the n-th image drawn is figure n);
3. no table caption ends a page, and a table split over pages keeps at least
   :data:`MIN_ROWS_PER_PART` body rows on each page (a table's rows are its horizontal rules:
   a thick rule under the header, a thin one under each body row);
4. no page is filled below :data:`MIN_FILL` of the body height, except the page before a new
   section (a section starts on a new page) and the last page;
5. figure text is at least :data:`MIN_FIGURE_FONT_PT` at its printed size: ``io.save_figure``
   records the smallest font of a figure (``min-font-pt``) and its dpi in the PNG, which the HTML
   inlines; the printed size is that font scaled by the image's width in the PDF over its width at
   the figure's own size.

:func:`check` returns a list of problems (empty: the rules hold); ``python -m
diffusion_report.report.pagecheck report.pdf [report.html]`` prints them.
"""

from __future__ import annotations

import base64
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

CM = 72 / 2.54
MIN_FILL = 1 / 3  # a page is at least a third full, except before a new section
MIN_ROWS_PER_PART = 2  # a split table keeps at least two body rows on each page
MIN_FIGURE_FONT_PT = 7.0  # smallest text in a figure at its printed size
TOL = 1.0  # pt: rounding of positions in the PDF

RUNNING = re.compile(r"Page \d+ of \d+|diffusion-report.*")
CAPTION = re.compile(r"(Figure|Table) (\d+)\.")  # a caption's label (bold: see _caption)


@dataclass(frozen=True)
class Body:
    """The page body box in PDF points, y growing downwards (pdfplumber's ``top``)."""

    left: float
    top: float
    right: float
    bottom: float

    @classmethod
    def from_css(cls, css: str, width: float, height: float) -> "Body":
        """The body of an A4 page from the first ``@page { margin: ... }`` (cm) of a stylesheet."""
        m = re.search(r"@page\s*\{[^}]*?margin:\s*([^;]+);", css)
        vals = [float(v) * CM for v in re.findall(r"([\d.]+)cm", m.group(1))] if m else [2 * CM]
        # the margin shorthand: 1 value (all), 2 (vertical, horizontal), 3 (top, horizontal, bottom), 4
        top, right, bottom, left = {1: vals * 4, 2: vals * 2, 3: vals + vals[1:2]}.get(len(vals), vals)[:4]
        return cls(left, top, width - right, height - bottom)


def _lines(page) -> list[dict]:
    """Text lines of the page body (running header and footer left out), top to bottom, each
    with its text, top, bottom and largest font size."""
    words = page.extract_words(extra_attrs=["size", "fontname"], keep_blank_chars=False, use_text_flow=True)
    rows: list[dict] = []
    for w in sorted(words, key=lambda w: (round(w["top"]), w["x0"])):
        if rows and abs(rows[-1]["top"] - w["top"]) < 2:
            r = rows[-1]
            r["text"] += " " + w["text"]
            r["bottom"] = max(r["bottom"], w["bottom"])
            r["size"] = max(r["size"], w["size"])
        else:
            rows.append({"text": w["text"], "top": w["top"], "bottom": w["bottom"], "size": w["size"],
                         "bold": "bold" in str(w.get("fontname", "")).lower()})
    return [r for r in rows if not RUNNING.fullmatch(r["text"].strip())]


def _caption(line: dict) -> re.Match | None:
    """The label of a figure or table caption ("Figure 3." in bold at the start of a line)."""
    return CAPTION.match(line["text"]) if line.get("bold") else None


def _rules(page, body: Body) -> list[tuple[float, float]]:
    """Horizontal table rules spanning at least half the body width: (y, line width), merged per y."""
    by_y: dict[float, list] = {}
    for ln in page.lines + page.rects:
        if abs(ln["top"] - ln["bottom"]) > 3:
            continue
        y = round((ln["top"] + ln["bottom"]) / 2, 1)
        key = next((k for k in by_y if abs(k - y) < 0.6), y)
        by_y.setdefault(key, []).append(ln)
    out = []
    for y, segs in sorted(by_y.items()):
        span = max(s["x1"] for s in segs) - min(s["x0"] for s in segs)
        if span >= 0.5 * (body.right - body.left):
            width = max(float(s.get("linewidth") or (s["bottom"] - s["top"])) for s in segs)
            out.append((y, width))
    return out


def _table_parts(lines: list[dict], rules: list[tuple[float, float]]) -> list[dict]:
    """Tables (or their parts) on one page: runs of rules not separated by a caption or by body
    text larger than table text. Each part: top, bottom, rows (thin rules after the header's
    thick one), whether it starts with a caption."""
    parts: list[dict] = []
    table_size = min((ln["size"] for ln in lines), default=0)
    for y, width in rules:
        between = [ln for ln in lines if parts and parts[-1]["bottom"] < ln["top"] < y]
        breaks = any(_caption(ln) or ln["size"] > table_size + 1.5 for ln in between)
        if not parts or breaks:
            above = [ln for ln in lines if ln["bottom"] <= y]
            captioned = bool(above) and any(_caption(ln) and ln["text"].startswith("Table") for ln in above[-4:])
            parts.append({"top": y, "bottom": y, "rows": 0, "header": False, "captioned": captioned})
        part = parts[-1]
        part["bottom"] = y
        if width >= 1.2:
            part["header"] = True
        elif part["header"]:
            part["rows"] += 1
    return parts


def _font_record(im) -> tuple[float | None, float, int] | None:
    """A PNG's font record from ``io.save_figure``: (smallest font in pt, or None when it has no
    text; dpi; pixel width), or None when the PNG carries no record."""
    rec = im.info.get("min-font-pt")
    if rec is None:
        return None
    return (None if rec == "none" else float(rec)), float(im.info.get("figure-dpi", 100)), im.width


def _figure_fonts(html: str) -> list[tuple[float | None, float, int] | None]:
    """Per inlined PNG of the HTML, in order: its :func:`_font_record`."""
    from PIL import Image

    return [_font_record(Image.open(io.BytesIO(base64.b64decode(m.group(1)))))
            for m in re.finditer(r'<img[^>]+src="data:image/png;base64,([^"]+)"', html)]


def printed_font_pt(png: str | Path, body_width_pt: float = 482.0, max_height_pt: float = 19 * CM) -> float | None:
    """The smallest text of a figure PNG (saved by ``io.save_figure``) as the report prints it: a
    pixel is 0.75 pt (96 dpi), shrunk to at most the text column's width and 19 cm high
    (``report/style.css``). None: the figure has no text."""
    from PIL import Image

    im = Image.open(png)
    rec = _font_record(im)
    if rec is None:
        raise ValueError(f"{png}: no font record (not saved by io.save_figure)")
    font, dpi, width = rec
    if font is None:
        return None
    shown_w = min(width * 0.75, body_width_pt, max_height_pt * width / im.height)
    return font * shown_w / (width / dpi * 72)


def check(pdf_path: str | Path, html_path: str | Path | None = None, css_path: str | Path | None = None) -> list[str]:
    """Problems with the print rules of the module docstring (empty list: all hold)."""
    import pdfplumber

    problems: list[str] = []
    css = Path(css_path).read_text() if css_path else "@page { margin: 2.2cm 2cm 2.2cm 2cm; }"
    fonts = _figure_fonts(Path(html_path).read_text()) if html_path else None
    with pdfplumber.open(str(pdf_path)) as pdf:
        pages = list(pdf.pages)
        body = Body.from_css(css, float(pages[0].width), float(pages[0].height))
        info = []
        image_page, caption_page = {}, {}
        for p, page in enumerate(pages, start=1):
            lines = _lines(page)
            images = sorted(page.images, key=lambda im: im["top"])
            for im in images:
                n = len(image_page) + 1
                image_page[n] = p
                if im["x0"] < body.left - TOL or im["x1"] > body.right + TOL or im["top"] < body.top - TOL or im["bottom"] > body.bottom + TOL:
                    problems.append(f"page {p}: figure {n} runs past the page body ({im['x0']:.0f}, {im['top']:.0f}, {im['x1']:.0f}, {im['bottom']:.0f})")
                if fonts is not None and n <= len(fonts):
                    rec = fonts[n - 1]
                    if rec is None:
                        problems.append(f"figure {n}: its PNG has no font record (saved without io.save_figure)")
                    elif rec[0] is not None:
                        natural_pt = rec[2] / rec[1] * 72
                        printed = rec[0] * (im["x1"] - im["x0"]) / natural_pt
                        if printed < MIN_FIGURE_FONT_PT - 0.05:
                            problems.append(f"figure {n} (page {p}): its smallest text prints at {printed:.1f} pt "
                                            f"({rec[0]:g} pt shrunk {natural_pt:.0f} -> {im['x1'] - im['x0']:.0f} pt wide); at least {MIN_FIGURE_FONT_PT:g} pt")
            for ln in lines:
                m = _caption(ln)
                if m and m.group(1) == "Figure":
                    caption_page[int(m.group(2))] = p
            if lines and _caption(lines[-1]) and lines[-1]["text"].startswith("Table") and not images:
                problems.append(f"page {p}: the caption of {lines[-1]['text'].split('.')[0]} ends the page")
            parts = _table_parts(lines, _rules(page, body))
            content_bottom = max([ln["bottom"] for ln in lines] + [im["bottom"] for im in images] + [body.top])
            content_top = min([ln["top"] for ln in lines] + [im["top"] for im in images] + [body.bottom])
            heading = next((ln for ln in lines[:2] if ln["size"] >= 12.5), None)
            info.append({"parts": parts, "fill": (content_bottom - body.top) / (body.bottom - body.top),
                         "starts_section": heading is not None, "top": content_top, "last_bottom": content_bottom})
        for n, c in sorted(caption_page.items()):
            if image_page.get(n) != c:
                problems.append(f"figure {n}: image on page {image_page.get(n)}, caption on page {c}")
        if len(caption_page) != len(image_page):
            problems.append(f"{len(image_page)} images but {len(caption_page)} figure captions")
        for i, pg in enumerate(info):
            p = i + 1
            nxt = info[i + 1] if i + 1 < len(info) else None
            if nxt is not None and not nxt["starts_section"] and pg["fill"] < MIN_FILL:
                problems.append(f"page {p}: {pg['fill']:.0%} full (at least {MIN_FILL:.0%} unless a section starts on the next page)")
            # a table part running to the page end that the next page continues (its first
            # content is an uncaptioned table part): both parts need enough rows
            if pg["parts"] and nxt is not None and nxt["parts"]:
                last, first = pg["parts"][-1], nxt["parts"][0]
                continues = not first["captioned"] and first["top"] - nxt["top"] < 30 and pg["last_bottom"] - last["bottom"] < 30
                if continues:
                    for where, part in ((p, last), (p + 1, first)):
                        if part["rows"] < MIN_ROWS_PER_PART:
                            problems.append(f"page {where}: a table split over pages {p}-{p + 1} keeps {part['rows']} body row(s) here "
                                            f"(at least {MIN_ROWS_PER_PART})")
    return problems


def main(argv: list[str] | None = None) -> int:
    args = (argv if argv is not None else sys.argv[1:])
    if not args:
        print("usage: python -m diffusion_report.report.pagecheck report.pdf [report.html [style.css]]", file=sys.stderr)
        return 2
    problems = check(*args[:3])
    print("\n".join(problems) if problems else "print rules hold")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
