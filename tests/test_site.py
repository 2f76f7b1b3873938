"""The built book, as a reader sees it: a real Chromium, driven by Playwright.

Needs the site (``make book``; ``make test`` builds it first) and Debian's
Chromium (``apt-get install chromium``; ``.ci/run`` installs it). Playwright's
own browser downloads are never used: the Python client drives the system
Chromium through ``executable_path``.

The static checks at the top (no CDN, every chapter built) need no browser.

Screenshots of every page go to ``artifacts/screenshots/`` (gitignored).
Set ``DDPM_CHROMIUM`` to use another Chromium binary.
"""

from __future__ import annotations

import fnmatch
import functools
import html.parser
import http.server
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from _browser import SCREENSHOTS, chromium

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "book" / "_build" / "html"
TOC = ROOT / "book" / "_toc.yml"
PAGE_TIMEOUT_MS = 60_000
DESKTOP = {"width": 1280, "height": 900}    # the viewport of every browser test, unless it says otherwise
PHONE = {"width": 390, "height": 844}


# --------------------------------------------------------------------------- #
# Which pages: the documents listed in book/_toc.yml (globs expanded)
# --------------------------------------------------------------------------- #
def _toc_docnames() -> list[str]:
    import yaml

    toc = yaml.safe_load(TOC.read_text(encoding="utf8"))
    sources = sorted(
        p.relative_to(ROOT).with_suffix("").as_posix()
        for folder in ("book", "notebooks")
        for p in (ROOT / folder).glob("*.md")
    )
    docs: list[str] = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                docs.append(entry["file"])
            elif "glob" in entry:
                docs.extend(d for d in sources if fnmatch.fnmatchcase(d, entry["glob"]))
            for key in ("sections", "chapters", "parts"):
                walk(entry.get(key))

    walk(toc.get("parts"))
    walk(toc.get("chapters"))
    return list(dict.fromkeys(docs))


DOCNAMES = _toc_docnames()
CHAPTERS = [d for d in DOCNAMES if d.startswith("notebooks/")]


def _html_path(docname: str) -> Path:
    return SITE / f"{docname}.html"


@pytest.fixture(scope="session")
def site() -> Path:
    if not (SITE / "index.html").is_file():
        pytest.fail(
            f"The site is not built: {SITE / 'index.html'} is missing. "
            "Run `make book` first (`make test` does it for you).",
            pytrace=False,
        )
    return SITE


# --------------------------------------------------------------------------- #
# Static checks: no browser needed
# --------------------------------------------------------------------------- #
def test_every_chapter_source_is_in_the_toc():
    chapters = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.md"))
    assert [c.split("/")[-1] for c in CHAPTERS] == chapters


@pytest.mark.parametrize("docname", DOCNAMES)
def test_page_was_built(site, docname):
    assert _html_path(docname).is_file(), f"{docname}.html missing: run `make book`"


_RESOURCE = re.compile(
    r"<(script|link|img|iframe|source|video|audio|embed|object)\b[^>]*?"
    r"\b(src|href|data)\s*=\s*[\"']?((?:https?:)?//[^\"'>\s]+)",
    re.IGNORECASE,
)


def test_no_resource_from_the_network(site):
    """No page loads a script, style sheet, font, image or frame from another host."""
    offenders = []
    for page in sorted(site.rglob("*.html")):
        for tag, _attr, url in _RESOURCE.findall(page.read_text(encoding="utf8")):
            offenders.append(f"{page.relative_to(site)}: <{tag}> {url}")
    assert not offenders, "the site must work offline:\n" + "\n".join(offenders)


def test_mathjax_is_shipped_with_the_site(site):
    pages_with_math = 0
    for page in sorted(site.rglob("*.html")):
        text = page.read_text(encoding="utf8")
        srcs = re.findall(r"<script[^>]*\bsrc=\"([^\"]*mathjax[^\"]*)\"", text, re.IGNORECASE)
        for src in srcs:
            assert "://" not in src and not src.startswith("//"), f"{page}: MathJax from {src}"
            local = (page.parent / src.split("?")[0]).resolve()
            assert local.is_file(), f"{page}: {src} does not exist in the site"
        pages_with_math += bool(srcs)
    assert pages_with_math, "no page loads MathJax at all"
    fonts = site / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2"
    assert any(fonts.glob("*.woff")), f"MathJax fonts missing in {fonts}"


def test_every_page_has_the_favicon(site):
    """A favicon on every page (without one, every page view logs a 404 for /favicon.ico)."""
    missing = []
    for page in sorted(site.rglob("*.html")):
        text = page.read_text(encoding="utf8")
        if page.parent.name == "_static" or re.match(r'\s*<meta http-equiv="Refresh"', text):
            continue      # the themes' template macros, and the root's redirect to the first page
        icons = re.findall(r'<link rel="(?:shortcut )?icon" href="([^"]+)"', text)
        if not icons or not (page.parent / icons[0]).resolve().is_file():
            missing.append(str(page.relative_to(site)))
    assert not missing, f"pages without a favicon that exists: {missing[:5]} ({len(missing)} in all)"


def test_the_index_points_into_every_chapter(site):
    """genindex.html lists the terms each chapter indexes (its ``{index}`` block under the title), with links."""
    text = (site / "genindex.html").read_text(encoding="utf8")
    linked = {c for c in CHAPTERS if f'href="{c}.html#index-' in text}
    assert linked == set(CHAPTERS), f"chapters with no entry in the index: {sorted(set(CHAPTERS) - linked)}"


def test_page_weights_are_reported_and_the_first_chapter_is_light(site, capsys):
    """Every page's HTML weight, printed (pytest -s shows it); chapter 1, with its two players, under 0.6 MB,
    and no page carries ipywidgets state it does not use."""
    weights = {str(p.relative_to(site)): p.stat().st_size for p in sorted(site.rglob("*.html"))
               if p.parent.name != "_static"}
    with capsys.disabled():
        print("\npage weights (kB): " + ", ".join(f"{k} {v / 1000:.0f}" for k, v in weights.items()))
    assert weights["notebooks/01_forward_noising.html"] < 600_000, weights["notebooks/01_forward_noising.html"]
    stale = [page for page in weights if "widget-state+json" in (site / page).read_text(encoding="utf8")]
    assert not stale, f"pages with unused widget state: {stale}"


def test_every_page_has_one_viewport_meta(site):
    """One <meta name="viewport"> per page: the layout, the pydata theme and the book theme wrote three, and
    offline_site keeps the first (a browser honours only one)."""
    counts = {}
    for page in sorted(site.rglob("*.html")):
        text = page.read_text(encoding="utf8")
        if page.parent.name == "_static" or re.match(r'\s*<meta http-equiv="Refresh"', text):
            continue
        counts[str(page.relative_to(site))] = len(re.findall(r'<meta\s+name="viewport"', text))
    wrong = {page: n for page, n in counts.items() if n != 1}
    assert counts and not wrong, f"pages without exactly one viewport meta tag: {wrong}"


def test_every_chapter_downloads_as_a_notebook_and_all_as_a_zip(site):
    """Each chapter's download menu links its .ipynb and the zip of all chapters (book/_ext/notebook_downloads.py);
    each notebook has the code cells of its .md source and no outputs, the zip holds every chapter, and "Run it
    yourself" links the zip."""
    import zipfile

    import jupytext
    import nbformat

    zip_path = site / "_notebooks" / "ddpm-book-notebooks.zip"
    assert zip_path.is_file(), "the zip of all chapters is missing"
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
    for docname in CHAPTERS:
        name = docname.split("/")[-1]
        html = _html_path(docname).read_text(encoding="utf8")
        for target in (f"../_notebooks/{name}.ipynb", "../_notebooks/ddpm-book-notebooks.zip"):
            assert f'href="{target}"' in html, f"{docname}: no link to {target} in its download menu"
        notebook = nbformat.read(site / "_notebooks" / f"{name}.ipynb", as_version=4)
        nbformat.validate(notebook)
        source = jupytext.read(ROOT / f"{docname}.md")
        code = [c.source for c in notebook.cells if c.cell_type == "code"]
        assert code == [c.source for c in source.cells if c.cell_type == "code"], f"{name}.ipynb: other code cells"
        assert not any(c.get("outputs") for c in notebook.cells if c.cell_type == "code")
        assert f"ddpm-book-notebooks/{name}.ipynb" in names, f"{name} is not in the zip"
    howto = _html_path("book/run_it_yourself").read_text(encoding="utf8")
    assert 'href="../_notebooks/ddpm-book-notebooks.zip"' in howto


def test_the_whole_book_pdf_is_linked_where_it_was_built(site):
    """`make pdf` builds the book as one PDF and then the site again: every chapter's download menu links a copy
    of it (book/_ext/notebook_downloads.py). Where no PDF was built (CI: a fresh clone runs `make test`, not
    `make pdf`), no page links one and the site holds none."""
    built, copy = ROOT / "book" / "_build" / "latex" / "ddpm-book.pdf", site / "_notebooks" / "ddpm-book.pdf"
    linked = {d: 'href="../_notebooks/ddpm-book.pdf"' in _html_path(d).read_text(encoding="utf8") for d in CHAPTERS}
    assert set(linked.values()) == {copy.is_file()}, f"the PDF's link and file disagree: {linked}, {copy.is_file()}"
    if copy.is_file():
        assert built.is_file() and copy.read_bytes() == built.read_bytes(), "the site's PDF is not the one built"


@pytest.mark.parametrize("docname", CHAPTERS)
def test_exercise_solutions_are_labelled_as_solutions(site, docname):
    """A folded solution says "Show solution", not the generic "Show code cell content"."""
    exercises = len(re.findall(r"^:::\{admonition\} Exercise", (ROOT / f"{docname}.md").read_text(encoding="utf8"),
                               re.M))
    html = _html_path(docname).read_text(encoding="utf8")
    assert len(re.findall(r"Show solution", html)) >= exercises


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", html))


def test_the_reference_list_is_labelled_as_the_text_cites(site):
    """Author-year in the list ([Ho et al., 2020], book/_ext/bib_style.py) as in the text, "Ho et al. (2020)"."""
    html = _html_path("book/references").read_text(encoding="utf8")
    labels = [_text(x) for x in re.findall(
        r'<span class="label"><span class="fn-bracket">\[</span>(.*?)<span class="fn-bracket">\]', html, re.S)]
    bib = (ROOT / "book" / "references.bib").read_text(encoding="utf8")
    assert len(labels) == len(re.findall(r"^@\w+\{", bib, re.M))          # every entry, once
    assert len(set(labels)) == len(labels)                                # no two entries share a label
    bad = [x for x in labels if not re.fullmatch(r"\S.*, (\d{4}[a-z]?|n\.d\.)", x)]
    assert not bad, f"labels that are not 'Author, year': {bad}"
    assert "Ho et al., 2020" in labels
    chapter = _text(_html_path(CHAPTERS[0]).read_text(encoding="utf8"))
    assert "Ho et al. (2020)" in chapter or "(Ho et al., 2020)" in chapter


# --------------------------------------------------------------------------- #
# A local web server and the system Chromium
# --------------------------------------------------------------------------- #
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output readable
        pass


@pytest.fixture(scope="session")
def base_url(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def browser():
    with chromium() as b:
        yield b


class _Visit:
    """One page, opened in a fresh tab, with everything odd that happened."""

    def __init__(self, browser, base_url: str, docname: str, viewport: dict | None = None,
                 touch: bool = False):
        self.base = base_url
        self.url = urllib.parse.urljoin(base_url, f"{docname}.html")
        self.errors: list[str] = []
        self.external: list[str] = []
        self.failed: list[str] = []
        self.context = browser.new_context(viewport=viewport or DESKTOP, has_touch=touch)
        self.page = self.context.new_page()
        self.page.set_default_timeout(PAGE_TIMEOUT_MS)
        self.page.on(
            "console",
            lambda m: m.type == "error" and self.errors.append(f"console: {m.text} @ {m.location}"),
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on(
            "response",
            lambda r: r.status >= 400 and self.failed.append(f"HTTP {r.status}: {r.url}"),
        )
        self.page.on(
            "requestfailed",
            lambda r: r.url.startswith(self.base)
            and self.failed.append(f"failed: {r.url} ({r.failure})"),
        )
        self.page.route("**/*", self._only_local)

    def _only_local(self, route):
        url = route.request.url
        if url.startswith(self.base) or url.startswith("data:") or url.startswith("blob:"):
            route.continue_()
        else:
            self.external.append(url)
            route.abort()

    def open(self):
        response = self.page.goto(self.url, wait_until="load")
        assert response is not None and response.ok, f"{self.url}: {response and response.status}"
        self.wait_for_mathjax()
        return self

    def wait_for_mathjax(self):
        self.page.wait_for_function(
            """() => !document.querySelector('script[src*="mathjax"]')
                     || (window.MathJax && MathJax.startup && MathJax.startup.promise)"""
        )
        self.page.evaluate(
            """async () => {
                 if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
                   await MathJax.startup.promise;
                   if (MathJax.typesetPromise) await MathJax.typesetPromise();
                 }
                 if (document.fonts) await document.fonts.ready;
               }"""
        )

    def close(self):
        self.context.close()


@pytest.fixture
def visit(browser, base_url):
    opened = []

    def _open(docname: str, viewport: dict | None = None, touch: bool = False) -> _Visit:
        v = _Visit(browser, base_url, docname, viewport, touch).open()
        opened.append(v)
        return v

    yield _open
    for v in opened:
        v.close()


# --------------------------------------------------------------------------- #
# Every page in a real browser
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("docname", DOCNAMES)
def test_page_in_browser(visit, docname):
    """Each page, opened once at 1280 px: no console error, no request to another host, every image loads and
    has alt text or a caption, every player is a captioned figure, all maths typeset and no raw TeX left; a
    chapter also has equations and no figure shrunk past reading (``_shrunk_figures``)."""
    v = visit(docname)
    page = v.page

    # images: force every one to load now, then check it decoded
    broken = page.evaluate(
        """async () => {
             const imgs = Array.from(document.images);
             imgs.forEach(i => { i.loading = 'eager'; });
             await Promise.all(imgs.map(i => i.complete ? null
                 : new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
             return imgs.filter(i => !(i.naturalWidth > 0)).map(i => i.currentSrc || i.src || i.outerHTML);
           }"""
    )
    no_alt = page.evaluate(
        r"""() => Array.from(document.querySelectorAll('main img, article img'))
             .filter(i => {
               const alt = (i.getAttribute('alt') || '').trim();
               // docutils falls back to the file name when an image has no alt
               const meaningless = !alt || alt === i.getAttribute('src')
                                   || /\.(png|jpe?g|gif|svg|webp)$/i.test(alt);
               const fig = i.closest('figure');
               return meaningless && !(fig && fig.querySelector('figcaption'));
             })
             .map(i => (i.currentSrc || i.src || '').slice(0, 80))"""
    )

    # maths: every math element typeset by MathJax, nothing raw left over
    math = page.evaluate(
        """() => {
             const els = Array.from(document.querySelectorAll('.math'));
             const untypeset = els.filter(e => !e.querySelector('mjx-container'))
                                  .map(e => e.textContent.slice(0, 80));
             const errors = Array.from(document.querySelectorAll('mjx-merror'))
                                 .map(e => e.getAttribute('data-mjx-error') || e.textContent);
             const main = (document.querySelector('main') || document.body).cloneNode(true);
             main.querySelectorAll('pre, code, script, style, mjx-container, .math, .onlyprint')
                 .forEach(e => e.remove());
             return {count: document.querySelectorAll('mjx-container').length, n: els.length,
                     untypeset, errors, text: main.textContent};
           }"""
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{docname.replace('/', '__')}.png"), full_page=True)

    problems = []
    problems += v.errors
    problems += [f"request to another host (blocked): {u}" for u in v.external]
    problems += v.failed
    problems += [f"image did not load: {src[:120]}" for src in broken]
    problems += [f"image without alt text or caption: {src}" for src in no_alt]
    uncaptioned = page.evaluate(
        "() => [...document.querySelectorAll('.animation')]"
        "        .filter(a => !a.closest('figure')?.querySelector('figcaption')).length")
    problems += [f"{uncaptioned} player(s) without a figure caption"] if uncaptioned else []
    problems += [f"equation not typeset: {t!r}" for t in math["untypeset"]]
    problems += [f"MathJax error: {t!r}" for t in math["errors"]]
    for raw in ("$$", "\\begin{", "\\(", "\\["):
        if raw in math["text"]:
            i = math["text"].index(raw)
            problems.append(f"raw TeX {raw!r} in the text: ...{math['text'][max(0, i - 40):i + 60]!r}")
    # a TeX command outside maths and code: e.g. the text of a {ref} to a title with maths
    for m in re.finditer(r"\\[A-Za-z]{2,}", math["text"]):
        problems.append(
            f"raw TeX {m.group()!r} in the text: ...{math['text'][max(0, m.start() - 60):m.end() + 20]!r}"
            " (a {ref} to a title with maths shows the TeX: give the link its own text, "
            "{ref}`words <label>`)"
        )
    if docname in CHAPTERS:
        # the book's chapters are about maths: each has typeset equations
        problems += [] if math["count"] else ["no equation typeset by MathJax"]
        problems += [f"figure shrunk past reading (make it narrower): {f}" for f in _shrunk_figures(page)]
    elif math["n"]:
        assert math["count"] > 0
    assert not problems, f"{docname}:\n  " + "\n  ".join(problems)


def _shrunk_figures(page) -> list[dict]:
    """At 1280 px no chapter figure may be drawn at less than 1 / 1.45 of its pixel width: a figure made wider than
    the column (matplotlib at 100 dpi) shrinks its 10-point labels to 7 px and less (Fig. 10.4's legends were
    6 px). The players are left out: their frames fit the column by fit.css. (Images already loaded.)"""
    return page.evaluate(
        """() => [...document.querySelectorAll('article img')]
                 .filter(i => i.naturalWidth > 0 && !i.closest('.animation'))
                 .map(i => ({w: i.naturalWidth, shown: i.getBoundingClientRect().width,
                             caption: (i.closest('figure')?.querySelector('figcaption')?.textContent || '')
                                      .trim().slice(0, 60)}))
                 .filter(f => f.shown > 0 && f.w / f.shown > 1.45)""")


def test_search_results_show_no_raw_tex(visit):
    """Search results (book/_static/search-maths.js): the text under each result reads its maths as plain text
    ("ᾱ_t", not "\\(\\bar\\alpha_t\\)"), and so do the result titles (typesetting them raced with MathJax's
    own pass); nothing shows a backslash."""
    import unicodedata

    v = visit("search")
    for tex, plain in ((r"\(\sqrt{1 - \bar\alpha_t}\,\epsilon\)", "√(1 - \u03b1\u0304_t) ε"),
                       (r"\(q(x_{t-1} \mid x_t)\)", "q(x_(t-1) | x_t)"), (r"\(L_\text{simple}\)", "L_simple"),
                       (r"\(\tilde{\mu}_t(x_t, x_0)\)", "\u03bc\u0303_t(x_t, x_0)")):
        assert v.page.evaluate("tex => plainTeX(tex)", tex) == unicodedata.normalize("NFC", plain), tex
    v.page.goto(v.url + "?q=posterior", wait_until="load")
    v.page.wait_for_function(
        """() => { const items = [...document.querySelectorAll('ul.search li')];
                   return items.length > 0 && items.every(li => li.querySelector('p.context'))
                          && /finished/.test(document.querySelector('.search-summary')?.textContent || ''); }""",
        timeout=PAGE_TIMEOUT_MS,
    )
    v.wait_for_mathjax()
    items = v.page.evaluate("[...document.querySelectorAll('ul.search li')].map(li => li.textContent)")
    raw = [text for text in items if "\\" in text]
    assert not raw, f"search results with raw TeX: {[t[:200] for t in raw[:3]]}"
    contexts = v.page.evaluate("[...document.querySelectorAll('ul.search li p.context')].map(p => p.textContent)")
    assert any(re.search(r"[α-ωᾱ]|_t", c) for c in contexts), "no result's summary shows any maths"
    assert not v.errors, v.errors


def test_the_model_cards_file_table_fits_a_phone(visit):
    """At 390 px the model card's list of files shows both columns without scrolling (book/_static/fit.css: code
    in a table cell wraps, the first column takes at most 40% of the screen); before, the file names' column
    filled the screen and the descriptions were off to the right."""
    v = visit("book/model_card", viewport=PHONE)
    table = v.page.evaluate(
        """() => { const t = document.querySelector('article table');
                   const box = t.parentElement;
                   return {table: t.getBoundingClientRect().width, shown: box.clientWidth, scroll: box.scrollWidth,
                           heads: [...t.querySelectorAll('th')].map(th => th.getBoundingClientRect().left)}; }""")
    assert table["scroll"] <= table["shown"] + 1, f"the file table scrolls sideways on a phone: {table}"
    assert len(table["heads"]) == 2 and all(0 <= x < PHONE["width"] for x in table["heads"]), table


def test_timestep_player_changes_the_frame(visit):
    """Chapter 1's kernel-free player (matplotlib to_jshtml): moving it shows another frame."""
    assert CHAPTERS, "no chapter in the toc"
    v = visit(CHAPTERS[0])
    page = v.page
    sliders = page.locator("input[type=range][id^=_anim_slider]")
    assert sliders.count() > 0, (
        f"{CHAPTERS[0]} has no timestep player (a matplotlib animation shown with "
        "HTML(anim.to_jshtml()))"
    )
    for i in range(sliders.count()):
        slider = sliders.nth(i)
        player = slider.locator("xpath=ancestor::div[contains(@class,'animation')][1]")
        img = player.locator("img[id^=_anim_img]")
        slider.scroll_into_view_if_needed()
        page.wait_for_function("el => el.src && el.naturalWidth > 0", arg=img.element_handle())
        n_frames = int(slider.get_attribute("max") or 0) + 1
        assert n_frames > 1, "the player has a single frame"

        before_src = img.get_attribute("src")
        before_png = img.screenshot()
        assert slider.input_value() == "0"

        # a real pointer: click near the right end of the slider's track
        box = slider.bounding_box()
        page.mouse.click(box["x"] + box["width"] * 0.97, box["y"] + box["height"] / 2)
        page.wait_for_function(
            "([el, s]) => el.src !== s", arg=[img.element_handle(), before_src]
        )
        assert int(slider.input_value()) > 0
        after_png = img.screenshot()
        assert img.get_attribute("src") != before_src
        assert after_png != before_png, "the frame's pixels did not change"

        # the keyboard and the buttons move it too
        slider.focus()
        page.keyboard.press("Home")
        assert slider.input_value() == "0"
        assert img.get_attribute("src") == before_src
        player.get_by_role("button", name="Next frame").click()
        assert slider.input_value() == "1"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        player.screenshot(path=str(SCREENSHOTS / f"player_{i}_moved.png"))
    assert not v.errors and not v.external, v.errors + v.external


# --------------------------------------------------------------------------- #
# Links
# --------------------------------------------------------------------------- #
class _Anchors(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])


@functools.lru_cache(maxsize=None)
def _parse(url: str) -> _Anchors:
    with urllib.request.urlopen(url, timeout=30) as r:
        parser = _Anchors()
        parser.feed(r.read().decode("utf8", "replace"))
        return parser


def test_internal_links_resolve(base_url):
    """Every same-site link of every page answers 200, and its #anchor exists."""
    bad = []
    checked = 0
    for docname in DOCNAMES + ["index", "genindex", "search"]:
        page_url = urllib.parse.urljoin(base_url, f"{docname}.html")
        for href in _parse(page_url).hrefs:
            target = urllib.parse.urljoin(page_url, href)
            if not target.startswith(base_url):
                continue  # another site: not fetched, the book must work offline
            path, _, fragment = target.partition("#")
            checked += 1
            try:
                with urllib.request.urlopen(path, timeout=30) as r:
                    is_html = r.headers.get_content_type() == "text/html"
            except urllib.error.HTTPError as exc:
                bad.append(f"{docname}: {href} -> HTTP {exc.code}")
                continue
            fragment = urllib.parse.unquote(fragment)
            if fragment and is_html and fragment not in _parse(path).ids:
                bad.append(f"{docname}: {href} -> no id {fragment!r} in {path}")
    assert checked > 0
    assert not bad, "broken internal links:\n" + "\n".join(bad)


# --------------------------------------------------------------------------- #
# Navigation at every width (issue 25)
# --------------------------------------------------------------------------- #
# With pydata-sphinx-theme 0.17 under sphinx-book-theme 1.3 the visible sidebar
# buttons did nothing (the themes wired up hidden copies in an extra top bar,
# pydata/pydata-sphinx-theme#2451, executablebooks/sphinx-book-theme#988), and
# that top bar showed a second search field. book/_config.yml drops the bar
# (navbar_persistent: []); book/_static/nav-fix.js and nav-fix.css cover the
# rest. Selectors come from the themes' templates: the buttons are
# sphinx-book-theme's toggle-primary-sidebar.html / toggle-secondary-sidebar.html
# (class primary-toggle / secondary-toggle; the one a reader can see is the
# one tested), the chapter list is its sbt-sidebar-nav.html (nav.bd-docs-nav),
# the page contents its page-toc.html (nav#pst-page-toc-nav), the search
# buttons pydata-sphinx-theme's search-button*.html (.search-button__button),
# which open its <dialog id="pst-search-dialog">.
NAV_LINK = "nav.bd-docs-nav a"
TOC_LINK = "nav#pst-page-toc-nav a"
# a search button or field of the page itself, not the one inside the search pop-up
SEARCH_ENTRY = ":is(.search-button__button, form.bd-search input):not(#pst-search-dialog *)"

# Where an element is: drawn at all (not display:none, visibility:hidden or
# opacity:0, itself or an ancestor), and wholly inside the viewport.
_WHERE = """sel => {
  const el = document.querySelector(sel);
  if (!el) return null;
  const r = el.getBoundingClientRect();
  const shown = el.checkVisibility({visibilityProperty: true, opacityProperty: true})
                && r.width > 0 && r.height > 0;
  const inside = r.left >= 0 && r.top >= 0 && r.right <= innerWidth && r.bottom <= innerHeight;
  return {shown, inside, box: [r.left, r.top, r.width, r.height].map(Math.round)};
}"""
_OPEN = f"sel => {{ const w = ({_WHERE})(sel); return !!w && w.shown && w.inside; }}"
_CLOSED = f"""sel => {{ const w = ({_WHERE})(sel);
  return !w || !w.shown || w.box[0] + w.box[2] <= 0 || w.box[0] >= innerWidth; }}"""
STATE_TIMEOUT_MS = 30_000     # a sidebar slides in or out in well under a second: this only guards a hang


def _nav_page() -> str:
    assert CHAPTERS, "no chapter in the toc"
    return CHAPTERS[0]          # a chapter: it has sections, so the page-contents button is there


def _where(page, selector: str):
    return page.evaluate(_WHERE, selector)


def _visible_toggle(v: _Visit, kind: str, what: str):
    """The one visible ``.primary-toggle`` / ``.secondary-toggle`` of the page."""
    toggles = v.page.locator(f".{kind}").filter(visible=True)
    n = toggles.count()
    if n != 1:
        every = v.page.locator(f".{kind}").evaluate_all("els => els.map(e => e.outerHTML.slice(0, 120))")
        pytest.fail(f"{v.url} at {v.page.viewport_size}: expected exactly one visible {what} "
                    f"button (.{kind}), found {n}; all of them: {every}", pytrace=False)
    return toggles.first


def _wait_until(v: _Visit, js: str, arg, message: str, detail=lambda: ""):
    """Wait until the function ``js(arg)`` is true in the page; else fail with ``message``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        v.page.wait_for_function(js, arg=arg, timeout=STATE_TIMEOUT_MS)
        return
    except PlaywrightTimeout:
        pass  # fail below, outside the except block, so the report shows only the message
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / f"nav_failed_{v.page.viewport_size['width']}px.png"
    v.page.screenshot(path=str(shot))
    pytest.fail(
        f"{message}\n  after {STATE_TIMEOUT_MS} ms: {detail()} (page {v.url}, viewport "
        f"{v.page.viewport_size}; screenshot {shot})\n  console errors: {v.errors}",
        pytrace=False,
    )


def _wait_for(v: _Visit, state: str, selector: str, message: str):
    """Wait until ``selector`` is open (shown, in the viewport) or closed; fail with ``message``."""
    _wait_until(v, _OPEN if state == "open" else _CLOSED, selector, message,
                lambda: f"{selector}: {_where(v.page, selector)}")


def _tap_outside(v: _Visit, selector: str):
    """Tap the page beside the open panel that holds ``selector`` (on its backdrop)."""
    box = v.page.evaluate(
        """sel => { const el = document.querySelector(sel);
                    const panel = el.closest('dialog') || el.closest('.bd-sidebar-primary, .bd-sidebar-secondary') || el;
                    const r = panel.getBoundingClientRect();
                    return [r.left, r.right]; }""",
        selector,
    )
    width, height = v.page.viewport_size["width"], v.page.viewport_size["height"]
    left, right = box
    x = (right + width) / 2 if width - right >= left else left / 2
    assert (width - right >= 20) or (left >= 20), f"the open panel fills the screen ({box}): no backdrop to tap"
    v.page.touchscreen.tap(x, height / 2)


def _no_errors(v: _Visit):
    assert not (v.errors or v.external or v.failed), (
        f"{v.url}: " + "; ".join(v.errors + [f"blocked: {u}" for u in v.external] + v.failed)
    )


def _screenshot(v: _Visit, name: str):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    v.page.screenshot(path=str(SCREENSHOTS / f"nav_{name}.png"))


def _assert_one_search_entry(v: _Visit):
    """Exactly one search button/field in view (outside the search pop-up), and it opens search."""
    page = v.page
    entries = page.evaluate(
        """sel => Array.from(document.querySelectorAll(sel))
             .filter(e => e.checkVisibility({visibilityProperty: true, opacityProperty: true}))
             .map(e => { const r = e.getBoundingClientRect();
                         return {html: e.outerHTML.slice(0, 100),
                                 box: [r.left, r.top, r.width, r.height].map(Math.round),
                                 inside: r.top >= 0 && r.left >= 0
                                         && r.right <= innerWidth && r.bottom <= innerHeight}; })""",
        SEARCH_ENTRY,
    )
    assert len(entries) == 1, (
        f"{v.url} at {page.viewport_size}: expected exactly one visible search entry point, "
        f"found {len(entries)}: {entries}"
    )
    assert entries[0]["inside"], f"the search entry point is off screen: {entries[0]}"
    page.locator(SEARCH_ENTRY).filter(visible=True).click()
    _wait_for(v, "open", "#pst-search-dialog input[name=q]",
              f"the search entry point {entries[0]['html']!r} did not open the search pop-up")
    page.keyboard.press("Escape")
    _wait_for(v, "closed", "#pst-search-dialog input[name=q]", "Escape did not close the search pop-up")


@pytest.mark.parametrize("toggle_class, label, link, escape_closes", [
    ("primary-toggle", "chapter-list", NAV_LINK, True),
    ("secondary-toggle", "page-contents", TOC_LINK, False),
], ids=["chapter-list", "page-contents"])
def test_phone_menu_button_opens_and_closes_its_sidebar(visit, toggle_class, label, link, escape_closes):
    """On a phone, the chapter-list button shows the chapter list and the page-contents button the page's
    sections; a tap beside them hides them (and Escape, for the chapter list)."""
    v = visit(_nav_page(), viewport=PHONE, touch=True)
    _wait_for(v, "closed", link, f"on a phone the {label} should start hidden")
    toggle = _visible_toggle(v, toggle_class, label)

    toggle.tap()
    _wait_for(v, "open", link, f"tapping the {label} button did not show the {label} "
              "(pydata-sphinx-theme#2451: is book/_static/nav-fix.js loaded?)")
    _screenshot(v, f"phone_{label}_open")
    _tap_outside(v, link)
    _wait_for(v, "closed", link, f"tapping beside the open {label} did not close it")

    toggle.tap()                                   # open again
    _wait_for(v, "open", link, f"the {label} button did not open it a second time")
    if escape_closes:
        v.page.keyboard.press("Escape")
        _wait_for(v, "closed", link, f"Escape did not close the {label}")
    _no_errors(v)


def test_desktop_sidebar_toggle_collapses_and_expands_the_primary_sidebar(visit):
    """On a desktop, the chapter-list button folds the chapter list away, and a second click brings it back."""
    v = visit(_nav_page(), viewport=DESKTOP)
    _wait_for(v, "open", NAV_LINK, "on a desktop the chapter list should start shown")
    toggle = _visible_toggle(v, "primary-toggle", "chapter-list")
    article = "article.bd-article"
    left = f"() => document.querySelector('{article}').getBoundingClientRect().left"
    left_before = v.page.evaluate(left)

    toggle.click()
    _wait_for(v, "closed", NAV_LINK, "the chapter-list button did not collapse the sidebar on a desktop "
              "(sphinx-book-theme#988: is book/_static/nav-fix.js loaded?)")
    _wait_until(v, f"x => ({left})() < x - 100", left_before,
                "the article did not widen into the room of the collapsed chapter list",
                lambda: f"{article} left edge {v.page.evaluate(left)}, was {left_before}")
    _screenshot(v, "desktop_chapter_list_collapsed")
    # with the chapter list (and its search field) folded away, search is still on screen
    _assert_one_search_entry(v)

    toggle.click()
    _wait_for(v, "open", NAV_LINK, "a second click did not bring the chapter list back")
    _wait_until(v, f"x => Math.abs(({left})() - x) < 1", left_before,
                "the article did not move back beside the chapter list",
                lambda: f"{article} left edge {v.page.evaluate(left)}, was {left_before}")
    _no_errors(v)


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_one_search_entry_point_and_no_empty_top_bar(visit, viewport):
    """One search button or field on screen, which opens search; no near-empty top bar above the page."""
    v = visit(_nav_page(), viewport=viewport)
    # pydata-sphinx-theme's own top bar (#pst-header) held only a second search
    # field and hidden sidebar buttons: it should take no room and show nothing
    header = v.page.evaluate(
        """() => { const h = document.getElementById('pst-header');
                   if (!h) return null;
                   const shown = Array.from(h.querySelectorAll('*'))
                     .filter(e => e.checkVisibility({visibilityProperty: true, opacityProperty: true})
                                  && e.getBoundingClientRect().width > 0
                                  && e.getBoundingClientRect().height > 0)
                     .map(e => e.outerHTML.slice(0, 100));
                   return {height: h.getBoundingClientRect().height, shown}; }"""
    )
    assert header is None or (header["height"] < 1 and not header["shown"]), (
        f"the near-empty top bar of pydata-sphinx-theme is back at {viewport} "
        f"(book/_config.yml: html_theme_options navbar_persistent: []): {header}"
    )
    _assert_one_search_entry(v)
    _no_errors(v)


# --------------------------------------------------------------------------- #
# Wide content at phone and desktop widths (book/_static/fit.css)
# --------------------------------------------------------------------------- #
_FIT = """() => {
  const column = document.querySelector('article.bd-article') || document.querySelector('main');
  const right = column.getBoundingClientRect().right + 1;
  const equations = Array.from(document.querySelectorAll('div.math mjx-container[display="true"]'));
  const wide = equations.filter(e => e.scrollWidth > e.clientWidth + 1);
  const hidden = wide.filter(e => !['auto', 'scroll'].includes(getComputedStyle(e).overflowX))
                     .map(e => e.textContent.slice(0, 60));
  const past = equations.filter(e => e.getBoundingClientRect().right > right)
                        .map(e => e.textContent.slice(0, 60));
  const players = Array.from(document.querySelectorAll('.animation'))
                       .filter(p => p.getBoundingClientRect().right > right).length;
  return {equations: equations.length, wide: wide.length, hidden, past, players,
          page: document.scrollingElement.scrollWidth, viewport: window.innerWidth};
}"""


# How many display equations may scroll sideways, over all chapters together. On a desktop none: every
# equation fits the column. On a phone (about 358 px of column, 30-35 characters of maths) a long equation
# is broken over lines (aligned, continuation lines indented with \quad); the few left scroll visibly.
WIDE_MATHS_BUDGET = {"phone": 5, "desktop": 0}


@pytest.mark.parametrize("width", ["phone", "desktop"])
def test_wide_maths_and_players_fit_the_column_or_scroll_visibly(visit, width):
    """Every display equation stays inside the column; one wider than the column scrolls (it is never cut
    off); players shrink to the column; no page scrolls sideways. At most WIDE_MATHS_BUDGET[width]
    display equations scroll in all the chapters together (none on a desktop). Prints how many scroll."""
    report = []
    wide = {}
    for docname in CHAPTERS:
        v = visit(docname, viewport=PHONE if width == "phone" else DESKTOP)
        fit = v.page.evaluate(_FIT)
        wide[docname] = fit["wide"]
        report.append(f"{docname}: {fit['wide']} of {fit['equations']} display equations scroll")
        assert not fit["hidden"], f"{docname} at {width} width: equations cut off, no scrollbar: {fit['hidden']}"
        assert not fit["past"], f"{docname} at {width} width: equations past the column: {fit['past']}"
        assert fit["players"] == 0, f"{docname} at {width} width: {fit['players']} player(s) wider than the column"
        assert fit["page"] <= fit["viewport"], (
            f"{docname} at {width} width: the page scrolls sideways ({fit['page']} px wide in a "
            f"{fit['viewport']} px viewport)")
        v.close()
    print(f"\n{width}: " + "; ".join(report))
    scrolling = {d: n for d, n in wide.items() if n}
    assert sum(wide.values()) <= WIDE_MATHS_BUDGET[width], (
        f"at {width} width {sum(wide.values())} display equations are wider than the column and scroll "
        f"(at most {WIDE_MATHS_BUDGET[width]} may): {scrolling}. Break them over lines "
        r"(\begin{aligned} ... \end{aligned}, continuation lines indented with &\quad)")
