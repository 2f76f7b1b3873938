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
        icons = re.findall(r'<link rel="(?:shortcut )?icon" href="([^"]+)"', page.read_text(encoding="utf8"))
        if not icons or not (page.parent / icons[0]).resolve().is_file():
            missing.append(str(page.relative_to(site)))
    assert not missing, f"pages without a favicon that exists: {missing[:5]} ({len(missing)} in all)"


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

    def __init__(self, browser, base_url: str, docname: str):
        self.base = base_url
        self.url = urllib.parse.urljoin(base_url, f"{docname}.html")
        self.errors: list[str] = []
        self.external: list[str] = []
        self.failed: list[str] = []
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
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

    def _open(docname: str) -> _Visit:
        v = _Visit(browser, base_url, docname).open()
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
    if math["n"]:
        assert math["count"] > 0
    assert not problems, f"{docname}:\n  " + "\n  ".join(problems)


def test_chapters_have_equations(visit):
    """The book's chapters are about maths: at least one is typeset by MathJax."""
    counts = {d: visit(d).page.locator("mjx-container").count() for d in CHAPTERS}
    assert any(counts.values()), f"no typeset equation in any chapter: {counts}"


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
