"""Keep the built book self-contained and accessible.

A small Sphinx extension, loaded from ``book/_config.yml``
(``sphinx.local_extensions``). It

* loads MathJax on every page (maths in a chapter title shows in every page's
  sidebar);
* typesets the maths in the text of a {ref} to a title that has maths;
* refuses to build if the MathJax copy that ``make mathjax`` unpacks into
  ``book/_static/mathjax/`` is missing, or if ``mathjax_path`` points at a CDN;
* drops the Font Awesome ``<link>`` to a CDN that matplotlib's
  ``Animation.to_jshtml()`` puts in every player (the book theme already ships
  Font Awesome, which draws the player's buttons);
* gives the player's frame ``<img>`` an ``alt`` text when it has none;
* leaves out sphinx-thebe's scripts and its Binder configuration, which
  Jupyter Book adds to every page although this book has no Thebe button
  (they would fetch Thebe from a CDN, and start a Binder server, if used);
* drops the ipywidgets state that the executed notebook carries from a page that
  shows no live widget (the book's widget cells are removed from the site, and
  their state would only weigh on the page);
* keeps one ``<meta name="viewport">`` per page: Sphinx's basic layout, the
  pydata theme and the book theme each write one (three per page, and a
  browser honours only one of them);
* warns -- which fails the ``-W`` build -- when a page

  - has an image with no alt text that is not in a figure with a caption,
  - shows a live ipywidgets output (it needs a kernel: tag the cell
    ``remove-output`` or ``remove-cell`` and show a kernel-free version),
  - loads a script, style sheet, image or frame from another site.
"""

from __future__ import annotations

import re
from pathlib import Path

from docutils import nodes
from docutils.utils import get_source_line
from sphinx.application import Sphinx
from sphinx.errors import ConfigError
from sphinx.util import logging

logger = logging.getLogger(__name__)

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

# matplotlib/_animation_data.py: JS_INCLUDE starts with this link.
_FONT_AWESOME_CDN = re.compile(
    r"<link\b[^>]*href=[\"']?(?:https?:)?//[^\"'>\s]*font-awesome[^>]*>\s*", re.IGNORECASE
)
_ANIM_IMG_NO_ALT = re.compile(r"<img\s+id=([\"'])(_anim_img[^\"']*)\1\s*>", re.IGNORECASE)
_ANIM_ALT = (
    "Animation frame; step through the frames with the slider and buttons below it"
)
_EXTERNAL_RESOURCE = re.compile(
    r"<(script|link|img|iframe|source|video|audio|embed|object)\b[^>]*?"
    r"\b(?:src|href|data)\s*=\s*[\"']?((?:https?:)?//[^\"'>\s]+)",
    re.IGNORECASE,
)


def _check_mathjax(app: Sphinx) -> None:
    path = app.config.mathjax_path or ""
    if "://" in path or path.startswith("//"):
        raise ConfigError(
            f"mathjax_path = {path!r} loads MathJax from the network; the book must "
            "work offline. Point it at the copy in book/_static/mathjax/ (run `make mathjax`)."
        )
    if app.builder.format != "html":
        return
    confdir = Path(app.confdir)
    for static in app.config.html_static_path:
        if (confdir / static / path).is_file():
            return
    raise ConfigError(
        f"MathJax not found: no {path!r} in html_static_path {app.config.html_static_path}. "
        "Run `make mathjax` (or `make book`, which does it) to unpack MathJax 3 into "
        "book/_static/mathjax/."
    )


def _location(node: nodes.Node, docname: str):
    source, line = get_source_line(node)
    if line is None:
        # myst-nb output nodes carry no line: use the closest ancestor that has one
        parent = node.parent
        while parent is not None and line is None:
            source, line = get_source_line(parent)
            parent = parent.parent
    return (docname, line) if line is not None else docname


def _cell(node: nodes.Node) -> str:
    """'cell N: ' for a node in the output of a notebook cell (N counts all cells from 1)."""
    parent = node.parent
    while parent is not None:
        if isinstance(parent, nodes.Element) and parent.get("cell_index") is not None:
            return f"cell {int(parent['cell_index']) + 1} of the notebook: "
        parent = parent.parent
    return ""


def _has_caption(node: nodes.Node) -> bool:
    parent = node.parent
    while parent is not None:
        if isinstance(parent, nodes.figure):
            return any(isinstance(c, nodes.caption) and c.astext().strip() for c in parent.children)
        parent = parent.parent
    return False


def _is_thebe(text: str) -> bool:
    return "text/x-thebe-config" in text or text.lstrip().startswith("<script>kernelName =")


def _process(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    for image in list(doctree.findall(nodes.image)):
        if not str(image.get("alt", "")).strip() and not _has_caption(image):
            logger.warning(
                "%simage without alt text or caption (%s). In Markdown write "
                "![what it shows](path); for a code cell's figure put in the cell's options "
                "`mystnb: {image: {alt: what the figure shows}}` "
                "or `mystnb: {figure: {caption: ..., name: fig-label}}`",
                _cell(image),
                Path(image.get("uri", "?")).name,
                location=_location(image, docname),
                type="offline_site",
                subtype="alt",
            )

    for raw in list(doctree.findall(nodes.raw)):
        if "html" not in raw.get("format", "").split():
            continue
        text = raw.astext()
        if _is_thebe(text):
            raw.parent.remove(raw)
            continue
        new = _FONT_AWESOME_CDN.sub("", text)
        new = _ANIM_IMG_NO_ALT.sub(
            lambda m: f'<img id="{m.group(2)}" alt="{_ANIM_ALT}">', new
        )
        if WIDGET_VIEW in new:
            logger.warning(
                "%sa live ipywidgets output cannot work on the static site (it needs a kernel). "
                "Tag the cell `remove-output` (or `remove-cell`) and show the same thing "
                "without a kernel, e.g. a matplotlib animation rendered with to_jshtml().",
                _cell(raw),
                location=_location(raw, docname),
                type="offline_site",
                subtype="widget",
            )
        for match in _EXTERNAL_RESOURCE.finditer(new):
            logger.warning(
                "%s<%s> loads %s from the network; the site must work offline. "
                "Ship the file with the book or drop it.",
                _cell(raw),
                match.group(1),
                match.group(2),
                location=_location(raw, docname),
                type="offline_site",
                subtype="external",
            )
        if new != text:
            raw.replace_self(nodes.raw(raw.rawsource, new, **raw.attributes))


def _typeset_ref_titles(app: Sphinx, doctree: nodes.document, docname: str) -> None:
    """Give {ref} links to a title with maths the title's maths, not its TeX source.

    Sphinx makes the text of a {ref} without explicit text from the plain text of
    the target's title, so "The closed form $q(x_t \\mid x_0)$" became the link text
    "The closed form q(x_t \\mid x_0)". Put the title's own nodes (maths included)
    in the link instead.
    """
    std = app.env.domaindata["std"]
    wanted = {}
    for _name, (doc, labelid, sectname) in std.get("labels", {}).items():
        if doc and sectname and "\\" in sectname:
            wanted.setdefault(sectname, (doc, labelid))
    if not wanted:
        return
    doctrees: dict[str, nodes.document] = {}
    for ref in list(doctree.findall(nodes.reference)):
        if not ref.children or not isinstance(ref.children[0], nodes.inline):
            continue
        inner = ref.children[0]
        if "std-ref" not in inner.get("classes", []) or inner.astext() not in wanted:
            continue
        doc, labelid = wanted[inner.astext()]
        if doc not in doctrees:
            doctrees[doc] = doctree if doc == docname else app.env.get_doctree(doc)
        for section in doctrees[doc].findall(nodes.section):
            if labelid in section["ids"] and isinstance(section[0], nodes.title):
                inner.children = []
                inner.extend(child.deepcopy() for child in section[0].children)
                break


def _drop_thebe_assets(app: Sphinx, pagename, templatename, context, doctree) -> None:
    def keep(asset) -> bool:
        name = str(getattr(asset, "filename", asset) or "")
        body = str(getattr(asset, "attributes", {}).get("body", ""))
        return "thebe" not in name and "THEBE_JS_URL" not in body

    for key in ("script_files", "css_files"):
        if key in context:
            context[key] = [asset for asset in context[key] if keep(asset)]


_VIEWPORT = re.compile(r"[ \t]*<meta\s+name=[\"']viewport[\"'][^>]*>[ \t]*\n?", re.IGNORECASE)


def one_viewport_meta(html: str) -> str:
    """``html`` with every ``<meta name="viewport">`` after the first removed."""
    seen = []

    def drop_repeats(match: re.Match) -> str:
        seen.append(match)
        return match.group(0) if len(seen) == 1 else ""

    return _VIEWPORT.sub(drop_repeats, html)


_WIDGET_STATE = re.compile(r'<script type="application/vnd\.jupyter\.widget-state\+json">.*?</script>\s*', re.S)


def without_unused_widget_state(html: str) -> str:
    """``html`` without its ipywidgets state when no widget view on the page uses it."""
    return html if WIDGET_VIEW in html else _WIDGET_STATE.sub("", html)


def _tidy_pages(app: Sphinx, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    for page in Path(app.outdir).rglob("*.html"):
        text = page.read_text(encoding="utf8")
        fixed = without_unused_widget_state(one_viewport_meta(text))
        if fixed != text:
            page.write_text(fixed, encoding="utf8")


def setup(app: Sphinx) -> dict:
    # Load MathJax on every page, not only on pages with equations in their body:
    # a chapter title with maths shows up in the sidebar and prev/next links of all pages.
    app.set_html_assets_policy("always")
    app.connect("builder-inited", _check_mathjax)
    # after sphinx-thebe's own doctree-resolved handler (priority 500)
    app.connect("doctree-resolved", _process, priority=900)
    app.connect("doctree-resolved", _typeset_ref_titles, priority=900)
    app.connect("html-page-context", _drop_thebe_assets, priority=900)
    app.connect("build-finished", _tidy_pages)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
