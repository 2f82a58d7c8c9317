r"""LaTeX to HTML for the report (rule ``theory_render``): :func:`render_theory` turns ``report/theory.tex`` into an HTML fragment with
  pandoc (LaTeX reader -> JSON AST, with citeproc for the reference list), then walks the AST:
  every ``Math`` node becomes an inline SVG drawn by ziamath (vector glyph outlines, no fonts, no
  JavaScript, the same in a browser and in WeasyPrint; ``role="img"`` with the TeX source as its
  ``aria-label`` and ``<title>``, the text alternative), numbered display equations get an anchor
  and a number, and ``\eqref``/``\ref`` links get that number. Unknown LaTeX commands are errors,
  never silently dropped or drawn as raw TeX. The reference list comes back apart from the body, so that
  the report can print it as its own last section; the citations in the body link to its entries.

:func:`inline_tex` typesets short notation outside the theory section (table cells, captions) with the
same renderer: ``$...$`` spans as inline SVG, everything else as escaped text.

The numerical checks of the derivation are :mod:`diffusion_report.stages.theory`.
"""

from __future__ import annotations

import copy
import functools
import html
import json
import logging
import re
import subprocess
import warnings
from pathlib import Path

log = logging.getLogger(__name__)


ID_PREFIX = "theory-"


SVG_EM = 24.0  # ziamath draws at 24 px per em; SVG sizes are converted to em so math scales with the text


NUMBERED_ENVS = {"equation": (True, None), "equation*": (False, None), "align": (True, "aligned"),
                 "align*": (False, "aligned"), "gather": (True, "gathered"), "gather*": (False, "gathered")}


class TheoryRenderError(RuntimeError):
    """theory.tex cannot be rendered faithfully (unknown command, unknown label, ...)."""


def pandoc_path() -> str:
    """The pandoc binary bundled with pypandoc_binary (no system pandoc needed)."""
    import pypandoc

    return pypandoc.get_pandoc_path()


# pandoc messages that lose nothing: packages it does not read, the BibTeX style (citeproc formats the list)
HARMLESS = re.compile(r"Could not load include file \S+\.sty|Skipped '\\bibliographystyle\{")


def run_pandoc(args: list[str], stdin: str, cwd: str | Path | None = None) -> str:
    """Run pandoc with ``--verbose``; a skipped LaTeX command or any warning is an error."""
    proc = subprocess.run([pandoc_path(), "--verbose", *args], input=stdin.encode("utf-8"), capture_output=True, cwd=cwd)
    err = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise TheoryRenderError(f"pandoc failed (exit {proc.returncode}): {err.strip()}")
    problems = [ln for ln in err.splitlines()
                if (ln.startswith("[WARNING]") or "Skipped" in ln or "Could not" in ln) and not HARMLESS.search(ln)]
    if problems:
        raise TheoryRenderError("pandoc could not convert all of theory.tex:\n" + "\n".join(problems))
    return proc.stdout.decode("utf-8")


def latex_to_ast(tex_path: str | Path, bib_path: str | Path | None) -> dict:
    """Pandoc's JSON AST of a LaTeX file, citations resolved by citeproc (reference list appended as
    the last block, a Div with id ``refs`` and no heading: the report gives it one, see :func:`split_references`)."""
    tex_path = Path(tex_path)
    args = ["-f", "latex", "-t", "json"]
    if bib_path is not None:
        args += ["--citeproc", f"--bibliography={Path(bib_path).resolve()}", "-M", "link-citations=true"]
    return json.loads(run_pandoc(args, tex_path.read_text(encoding="utf-8"), cwd=tex_path.parent))


REFS_DIV = "refs"  # citeproc's id of the reference list (pandoc's --id-prefix makes it theory-refs in HTML)


def split_references(ast: dict) -> tuple[dict, dict | None]:
    """(the AST without its reference list, an AST of the list alone, or None when nothing is cited).

    Both keep pandoc's metadata, so rendered with :func:`ast_to_html` (same ``--id-prefix``) the
    citations of the body link to the entries of the list, wherever the report puts it.
    """
    blocks = ast["blocks"]
    found = [i for i, b in enumerate(blocks) if b.get("t") == "Div" and b["c"][0][0] == REFS_DIV]
    if not found:
        return ast, None
    if len(found) > 1:
        raise TheoryRenderError("more than one reference list in the document")
    body = {**ast, "blocks": blocks[:found[0]] + blocks[found[0] + 1:]}
    return body, {**ast, "blocks": [blocks[found[0]]]}


def ast_to_html(ast: dict) -> str:
    """HTML fragment (no <html>/<head>) from a JSON AST; \\section -> <h3> (the report owns h1/h2)."""
    return run_pandoc(["-f", "json", "-t", "html5", "--shift-heading-level-by=2", f"--id-prefix={ID_PREFIX}",
                       "--wrap=none", "--syntax-highlighting=none"], json.dumps(ast))


def _svg_viewbox(svg: str) -> tuple[float, float, float, float]:
    m = re.search(r'viewBox="([^"]+)"', svg)
    if not m:
        raise TheoryRenderError("ziamath returned an SVG without a viewBox")
    x, y, w, h = (float(v) for v in m.group(1).split())
    return x, y, w, h


@functools.lru_cache(maxsize=4096)
def tex_to_svg(tex: str, display: bool = False) -> str:
    """One TeX math string -> an inline <svg> of glyph outlines (ziamath, STIX Two Math).

    The size is set in em (24 SVG units = 1 em) and the baseline is aligned with the text by
    ``vertical-align``. The SVG is ``role="img"`` with the TeX (:func:`math_label`) as its
    ``aria-label`` and ``<title>``, so screen readers and text tools get the formula as text. Raises :class:`TheoryRenderError` for commands ziamath does not know
    (it would otherwise draw them as literal "\\foo" text).
    """
    with warnings.catch_warnings():  # ziamath loads its font through a deprecated importlib.resources API
        warnings.simplefilter("ignore", DeprecationWarning)
        import ziamath

        mml = ziamath.tex.tex2mml(tex, inline=not display)
    bad = sorted({txt.strip() for txt in re.findall(r">([^<]*)<", mml) if "\\" in txt})
    if bad or "merror" in mml:
        raise TheoryRenderError(f"math not supported by the SVG renderer: {', '.join(bad) or 'merror'} in ${tex}$")
    old = ziamath.config.svg2, ziamath.config.precision
    ziamath.config.svg2, ziamath.config.precision = False, 1  # plain <path>s: no ids that could clash
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            svg = ziamath.Latex(tex, inline=not display).svg()
    finally:
        ziamath.config.svg2, ziamath.config.precision = old
    _, y, w, h = _svg_viewbox(svg)
    depth = h + y  # below the baseline (SVG y grows downwards, baseline at y = 0)
    style = f"width:{w / SVG_EM:.3f}em;height:{h / SVG_EM:.3f}em;vertical-align:{-depth / SVG_EM:.3f}em"
    if display:
        style += ";flex:none"
    svg = re.sub(r'\swidth="[^"]*"', f' width="{w / SVG_EM:.3f}em"', svg, count=1)
    svg = re.sub(r'\sheight="[^"]*"', f' height="{h / SVG_EM:.3f}em"', svg, count=1)
    # text alternative: the TeX source, as the accessible name (aria-label) and as the SVG's <title>
    # (read by screen readers, shown as a tooltip, never drawn: the PDF keeps vector glyphs only)
    label = html.escape(math_label(tex), quote=True)
    svg = svg.replace("<svg ", f'<svg role="img" aria-label="{label}" focusable="false" style="{style}" ', 1)
    return re.sub(r"^(<svg\b[^>]*>)", lambda m: f"{m.group(1)}<title>{label}</title>", svg, count=1)


def math_label(tex: str) -> str:
    """The text alternative of a math element: its TeX source with runs of white space made one space."""
    return " ".join(tex.split())


_INLINE = re.compile(r"(\$[^$]+\$|`[^`]+`)")


def inline_tex(text: str) -> str:
    r"""Short notation with TeX math -> HTML, typeset like the theory section.

    ``$...$`` spans become ``<span class="math inline">`` with the SVG of :func:`tex_to_svg` (its TeX
    as the text alternative), ```...``` spans ``<code>``, the rest escaped text. For table cells,
    captions and headings, e.g. ``inline_tex(r"chain $x_0$ coefficient $= \sqrt{\bar\alpha_t}$")``.
    An unpaired ``$`` or backtick is an error (it would otherwise print as raw TeX).
    """
    out = []
    for part in _INLINE.split(text):
        if len(part) > 1 and part[0] == part[-1] == "$":
            out.append(f'<span class="math inline">{tex_to_svg(part[1:-1].strip())}</span>')
        elif len(part) > 1 and part[0] == part[-1] == "`":
            out.append(f"<code>{html.escape(part[1:-1], quote=False)}</code>")
        elif "$" in part or "`" in part:
            raise TheoryRenderError(f"unpaired $ or ` in {text!r}")
        else:
            out.append(html.escape(part, quote=False))
    return "".join(out)


def parse_display(tex: str) -> tuple[str, bool, str | None]:
    """A DisplayMath string from pandoc -> (body TeX, numbered?, label or None).

    ``\\begin{equation}`` is numbered, ``equation*`` and ``\\[...\\]`` are not; ``align``/``gather``
    become one numbered ``aligned``/``gathered`` block. ``\\nonumber``/``\\notag`` unnumber.
    """
    body, numbered = tex.strip(), False
    m = re.fullmatch(r"\\begin\{([a-z]+\*?)\}(.*)\\end\{\1\}", body, flags=re.S)
    if m:
        env = m.group(1)
        if env not in NUMBERED_ENVS:
            raise TheoryRenderError(f"unsupported display environment {env!r}; use equation, align or gather")
        numbered, inner = NUMBERED_ENVS[env]
        body = m.group(2).strip()
        if inner:
            body = f"\\begin{{{inner}}}{body}\\end{{{inner}}}"
    labels = re.findall(r"\\label\{([^}]*)\}", body)
    if len(labels) > 1:
        raise TheoryRenderError(f"one \\label per display equation, found {labels}")
    body = re.sub(r"\\label\{[^}]*\}", "", body)
    if re.search(r"\\(nonumber|notag)\b", body):
        numbered = False
        body = re.sub(r"\\(nonumber|notag)\b", "", body)
    label = labels[0] if labels else None
    if label and not numbered:
        raise TheoryRenderError(f"\\label{{{label}}} on an unnumbered equation")
    return body.strip(), numbered, label


def anchor_id(label: str) -> str:
    """HTML id of a LaTeX label, e.g. eq:closed-form -> theory-eq-closed-form."""
    return ID_PREFIX + re.sub(r"[^A-Za-z0-9_-]+", "-", label)


def _walk(node, fn):
    """Apply ``fn`` to every dict node of the AST (pre-order); fn returns a replacement or None."""
    if isinstance(node, list):
        for i, child in enumerate(node):
            new = fn(child) if isinstance(child, dict) else None
            if new is not None:
                node[i] = new
            else:
                _walk(child, fn)
    elif isinstance(node, dict):
        for value in node.values():
            if isinstance(value, (list, dict)):
                _walk(value, fn)


def _stringify(inlines) -> str:
    out = []

    def grab(n):
        if n.get("t") == "Str":
            out.append(n["c"])
        elif n.get("t") in ("Space", "SoftBreak"):
            out.append(" ")
        return None

    _walk(copy.deepcopy(inlines), grab)
    return "".join(out)


def number_equations(ast: dict) -> dict[str, int]:
    """Equation numbers in document order, {label: number}, for the numbered displays."""
    numbers: dict[str, int] = {}
    count = 0

    def visit(n):
        nonlocal count
        if n.get("t") == "Math" and n["c"][0]["t"] == "DisplayMath":
            _, numbered, label = parse_display(n["c"][1])
            if numbered:
                count += 1
                if label:
                    if label in numbers:
                        raise TheoryRenderError(f"\\label{{{label}}} is used twice")
                    numbers[label] = count
        return None

    _walk(ast["blocks"], visit)
    return numbers


def math_to_svg_ast(ast: dict) -> dict:
    """Replace every Math node by raw HTML with an SVG; number displays; resolve \\eqref/\\ref.

    Returns a new AST; raises :class:`TheoryRenderError` for an unknown label or leftover raw TeX.
    """
    ast = copy.deepcopy(ast)
    numbers = number_equations(ast)
    headers: dict[str, str] = {}

    def collect(n):
        if n.get("t") == "Header" and n["c"][1][0]:
            headers[n["c"][1][0]] = _stringify(n["c"][2])
        return None

    _walk(ast["blocks"], collect)
    count = 0

    def convert(n):
        nonlocal count
        t = n.get("t")
        if t == "Math":
            kind, tex = n["c"][0]["t"], n["c"][1]
            if kind == "InlineMath":
                return {"t": "RawInline", "c": ["html", f'<span class="math inline">{tex_to_svg(tex)}</span>']}
            body, numbered, label = parse_display(tex)
            svg = tex_to_svg(body, display=True)
            # flex row: [spacer | equation | number], so the equation is centred and the number
            # sits at the right margin, vertically centred on the equation (browser and WeasyPrint)
            row = "display:flex;align-items:center;margin:0.6em 0;page-break-inside:avoid;break-inside:avoid"
            side = "flex:1 1 0;min-width:2.5em"
            if not numbered:
                return {"t": "RawInline", "c": ["html", f'<span class="math display" style="{row}">'
                                                        f'<span style="{side}"></span>{svg}<span style="{side}"></span></span>']}
            count += 1
            ident = f' id="{anchor_id(label)}"' if label else ""
            return {"t": "RawInline", "c": ["html",
                    f'<span class="math display numbered"{ident} style="{row}"><span style="{side}"></span>{svg}'
                    f'<span class="eqno" style="{side};text-align:right">({count})</span></span>']}
        if t == "Link" and dict(n["c"][0][2]).get("reference-type") in ("eqref", "ref", "autoref"):
            attrs = dict(n["c"][0][2])
            label, rtype = attrs["reference"], attrs["reference-type"]
            if label in numbers:
                text = f"({numbers[label]})" if rtype == "eqref" else str(numbers[label])
                return {"t": "RawInline", "c": ["html", f'<a class="eqref" href="#{anchor_id(label)}">{text}</a>']}
            if label in headers:
                return {"t": "RawInline", "c": ["html", f'<a class="secref" href="#{ID_PREFIX}{html.escape(label)}">'
                                                        f"{html.escape(headers[label])}</a>"]}
            raise TheoryRenderError(f"\\{rtype}{{{label}}}: no equation or section has this label "
                                    f"(known: {', '.join(sorted(numbers) + sorted(headers))})")
        if t in ("RawInline", "RawBlock") and n["c"][0] in ("latex", "tex"):
            raise TheoryRenderError(f"raw LaTeX that pandoc could not convert: {n['c'][1]!r}")
        return None

    _walk(ast["blocks"], convert)
    if numbers and max(numbers.values()) > count:
        raise TheoryRenderError("equation numbering is inconsistent")
    return ast


def _check_rendered(ast: dict, parts: list[str]) -> None:
    """Every Math node of ``ast`` became one SVG in ``parts``, and no raw TeX is left in their text."""
    n_math = json.dumps(ast).count('{"t": "Math"')
    html_out = "".join(parts)
    n_svg = html_out.count('<span class="math ')
    if n_svg != n_math or html_out.count("<svg") != n_math:
        raise TheoryRenderError(f"{n_math} math spans in theory.tex but {n_svg} rendered as SVG")
    visible = re.sub(r"<svg.*?</svg>", "", html_out, flags=re.S)
    visible = html.unescape(re.sub(r"<[^>]+>", "", visible))
    leftover = re.findall(r"\\[A-Za-z]+|\$", visible)
    if leftover:
        raise TheoryRenderError(f"raw TeX left in the rendered theory section: {sorted(set(leftover))}")


def render_theory(tex_path: str | Path, bib_path: str | Path | None = None) -> tuple[str, str]:
    """theory.tex (+ .bib) -> (HTML fragment of the body, HTML of its reference list or "").

    The body has sections as <h3>, math as SVG and numbered equations; its citations link to the
    entries of the list (ids ``theory-ref-<key>``), which has no heading of its own.
    """
    ast = latex_to_ast(tex_path, bib_path)
    body, refs = split_references(math_to_svg_ast(ast))
    parts = [ast_to_html(body), ast_to_html(refs) if refs is not None else ""]
    _check_rendered(ast, parts)
    return parts[0], parts[1]


def render_fragment(tex_path: str | Path, bib_path: str | Path | None = None) -> str:
    """theory.tex (+ .bib) as one HTML fragment: the body of :func:`render_theory` followed by its reference list."""
    body, refs = render_theory(tex_path, bib_path)
    return body + refs


def theory_render(tex_path: str, out_html: str, bib_path: str | None = None, out_refs: str | None = None) -> None:
    """Rule theory_render: write the HTML fragment and, to ``out_refs``, its reference list (both atomically)."""
    from diffusion_report.io import write_text

    fragment, refs = render_theory(tex_path, bib_path)
    log.info("rendered %s: %d math spans, %d numbered equations, %d references", tex_path, fragment.count('class="math '),
             fragment.count('class="eqno"'), refs.count('class="csl-entry"'))
    if out_refs is None and refs:
        raise TheoryRenderError("theory.tex cites references but no file was given for the reference list")
    write_text(out_html, fragment)
    if out_refs is not None:
        write_text(out_refs, refs)


def equation_numbers(fragment: str) -> dict[str, str]:
    """{label: "(n)"} read back from the rendered fragment's anchors."""
    found = re.findall(r'<span class="math display numbered" id="' + re.escape(ID_PREFIX) + r'([^"]+)"[^>]*>'
                       r'(?:(?!class="math ).)*?<span class="eqno"[^>]*>\((\d+)\)</span>', fragment, flags=re.S)
    return {label: f"({n})" for label, n in found}
