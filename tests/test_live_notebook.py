"""Chapter 1 as a learner runs it: JupyterLab, a live kernel, the ipywidgets.

The README tells a reader to start JupyterLab, open a chapter's ``.md`` with
*Open With -> Notebook* (jupytext's contents manager turns it into a notebook)
and run it. This test does exactly that in the system Chromium (see
``_browser.py``), on a JupyterLab server of its own: on localhost, on a free
port, with a token, its configuration, runtime, settings and workspaces in a
temporary folder, and the chapter copied there, so that nothing it does (a save,
an autosave, the paired ``.ipynb``) touches ``notebooks/``. Then it runs all
cells from the *Run* menu, moves the timestep slider of the widget cell (a
drag, then the keyboard) and picks the other schedule in the dropdown, and
checks that the figure the kernel draws changes each time.

Any request to another host is blocked and fails the test (but for the Font
Awesome link in matplotlib's player HTML, see the last steps). Each step that
fails says which step it was and leaves a screenshot in
``artifacts/screenshots/live_notebook__<step>.png``. Skipped (loudly) where
Chromium, Playwright, JupyterLab or jupytext is missing; ``.ci/run`` installs
them all.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _browser import ROOT, SCREENSHOTS, chromium, skip_loudly

CHAPTER = Path("notebooks") / "01_forward_noising.md"
PAGE_TIMEOUT_MS = 60_000
# guards against a hang, not speeds asked for: generous, for a machine loaded by other jobs
SERVER_START_S = 180
KERNEL_START_S = 180
RUN_ALL_TIMEOUT_S = 300  # the chapter itself takes ~10 s on a laptop CPU
WIDGET_UPDATE_TIMEOUT_MS = 60_000

# JupyterLab user settings for the test's server (its own settings folder): no
# autosave, every cell in the DOM (no virtual scrolling), no news or update
# check from the internet.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}


# --------------------------------------------------------------------------- #
# A JupyterLab server of our own
# --------------------------------------------------------------------------- #
@dataclass
class Lab:
    url: str  # http://127.0.0.1:PORT/
    token: str
    root: Path  # the server's root folder (a copy of what the test needs)
    runtime: Path  # kernels' connection files live here
    log: Path
    proc: subprocess.Popen = field(repr=False)

    def api(self, path: str, method: str = "GET"):
        req = urllib.request.Request(
            self.url + path.lstrip("/"),
            method=method,
            headers={"Authorization": f"token {self.token}"},
            data=b"" if method == "POST" else None,
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(encoding="utf8", errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "\n".join(lines[-n:])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kernel_pids(runtime: Path) -> list[int]:
    """Processes started with a connection file in our runtime folder: our kernels."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(runtime) in cmdline and "kernel" in cmdline:
            pids.append(int(proc.name))
    return pids


def _stop(lab: Lab) -> None:
    """Shut the server down with its kernels; kill by pid whatever is left."""
    with contextlib.suppress(Exception):
        lab.api("api/shutdown", method="POST")  # shuts every kernel down, then the server
    try:
        lab.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        lab.proc.send_signal(signal.SIGTERM)
        try:
            lab.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            lab.proc.kill()
            lab.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while _kernel_pids(lab.runtime) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _kernel_pids(lab.runtime):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    for module, what in [
        ("jupyterlab", "JupyterLab"),
        ("jupytext", "jupytext"),
        ("ipywidgets", "ipywidgets"),
        ("ipykernel", "ipykernel"),
    ]:
        if importlib.util.find_spec(module) is None:
            skip_loudly(
                f"{what} is not installed in {sys.executable} "
                "(the `notebooks` extra: run `make venv`)"
            )

    tmp = tmp_path_factory.mktemp("jupyterlab")
    root, runtime = tmp / "root", tmp / "runtime"
    (root / CHAPTER.parent).mkdir(parents=True)
    shutil.copy2(ROOT / CHAPTER, root / CHAPTER)
    shutil.copy2(ROOT / "jupytext.toml", root / "jupytext.toml")
    for name, values in LAB_SETTINGS.items():
        f = tmp / "settings" / f"{name}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values), encoding="utf8")

    bin_dir = str(Path(sys.executable).parent)
    env = dict(
        os.environ,
        # the kernel spec "python3" runs `python`: this interpreter, with ddpm_lib
        PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""),
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTER_RUNTIME_DIR=str(runtime),
        JUPYTER_DATA_DIR=str(tmp / "data"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
        IPYTHONDIR=str(tmp / "ipython"),
    )
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "jupyter", "lab",
                "--no-browser",
                "--allow-root",  # CI runs as root
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={root}",
                "--LabApp.extension_manager=readonly",  # no PyPI queries
            ],
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Lab(f"http://127.0.0.1:{port}/", token, root, runtime, log, proc)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"JupyterLab exited with code {proc.returncode} while starting:\n"
                    + server.log_tail(),
                    pytrace=False,
                )
            try:
                server.api("api/status")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"JupyterLab did not answer on {server.url} within {SERVER_START_S} s:\n"
                        + server.log_tail(),
                        pytrace=False,
                    )
                time.sleep(0.25)
        yield server
    finally:
        _stop(server)


# --------------------------------------------------------------------------- #
# The browser, with every step named
# --------------------------------------------------------------------------- #
class Session:
    """One tab on the server; ``step(name)`` names what failed and saves a screenshot."""

    def __init__(self, browser, lab: Lab):
        self.lab = lab
        self.errors: list[str] = []
        self.external: list[str] = []
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.page.set_default_timeout(PAGE_TIMEOUT_MS)
        self.page.on(
            "console",
            lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"),
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.route("**/*", self._only_local)

    def _only_local(self, route):
        url = route.request.url
        if url.startswith(self.lab.url) or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            self.external.append(url)
            route.abort()

    @contextlib.contextmanager
    def step(self, name: str):
        try:
            yield
        except Exception as exc:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shot = SCREENSHOTS / f"live_notebook__{re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')}.png"
            with contextlib.suppress(Exception):
                self.page.screenshot(path=str(shot), full_page=True)
            errors = "\n  ".join(self.errors[-10:]) or "(none)"
            pytest.fail(
                f"live notebook, step {name!r} failed: {type(exc).__name__}: {exc}\n"
                f"screenshot: {shot}\n"
                f"browser console errors:\n  {errors}\n"
                f"JupyterLab server log (tail):\n{self.lab.log_tail()}"
            )

    def close(self):
        self.context.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def session(browser, lab):  # the browser first: no Chromium, no server started
    s = Session(browser, lab)
    try:
        yield s
    finally:
        s.close()


def _code_cells_in(md: Path) -> int:
    return len(re.findall(r"^```\{code-cell\}", md.read_text(encoding="utf8"), flags=re.M))


def _wait_for_kernel(s: Session) -> None:
    """Until the server has one kernel, idle, and the notebook's toolbar says so too."""
    indicator = s.page.locator(".jp-NotebookPanel:visible .jp-Notebook-ExecutionIndicator")
    deadline = time.monotonic() + KERNEL_START_S
    while True:
        states = [k["execution_state"] for k in s.lab.api("api/kernels")]
        shown = indicator.get_attribute("data-status") if indicator.count() == 1 else None
        if states == ["idle"] and shown == "idle":
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"no idle kernel after {KERNEL_START_S} s: the server's kernels are {states}, "
                f"the toolbar shows {shown!r}"
            )
        time.sleep(0.25)


def _wait_for_run_all(s: Session, n_cells: int) -> None:
    """Until every code cell has an execution count and the kernel is idle; fail on an error."""
    page, lab = s.page, s.lab
    deadline = time.monotonic() + RUN_ALL_TIMEOUT_S
    stalled_since = None
    while True:
        prompts = [
            p.strip()
            for p in page.locator(".jp-NotebookPanel:visible .jp-CodeCell .jp-InputPrompt").all_inner_texts()
        ]
        done = [re.fullmatch(r"\[\d+\]:", p) is not None for p in prompts]
        kernels = lab.api("api/kernels")
        idle = bool(kernels) and all(k["execution_state"] == "idle" for k in kernels)
        if len(prompts) == n_cells and all(done) and idle:
            return
        if idle and "[*]:" not in prompts and not all(done):
            # nothing running, nothing queued, and cells left unrun: a cell failed
            # (Run All stops there); give the last outputs a moment to arrive
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 5:
                errors = page.locator(
                    ".jp-NotebookPanel:visible "
                    ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                ).all_inner_texts()
                first_unrun = done.index(False) + 1
                raise AssertionError(
                    f"the kernel is idle but code cell {first_unrun} of {len(prompts)} never ran "
                    f"(prompts: {prompts});\nerror output:\n" + "\n---\n".join(e[-2000:] for e in errors)
                )
        else:
            stalled_since = None
        if time.monotonic() > deadline:
            raise AssertionError(
                f"the cells did not finish within {RUN_ALL_TIMEOUT_S} s (prompts: {prompts}, "
                f"kernels: {[k['execution_state'] for k in kernels]})"
            )
        time.sleep(0.5)


def _figure_src(widget) -> str:
    img = widget.locator(".jp-OutputArea-output img")
    return img.first.get_attribute("src") if img.count() == 1 else ""


def _wait_for_new_figure(s: Session, widget, before: str) -> str:
    s.page.wait_for_function(
        """([w, before]) => {
             const imgs = w.querySelectorAll('.jp-OutputArea-output img');
             return imgs.length === 1 && imgs[0].complete && imgs[0].naturalWidth > 0
                    && imgs[0].src && imgs[0].src !== before;
           }""",
        arg=[widget.element_handle(), before],
        timeout=WIDGET_UPDATE_TIMEOUT_MS,
    )
    return _figure_src(widget)


# --------------------------------------------------------------------------- #
# The test
# --------------------------------------------------------------------------- #
def test_chapter_1_widgets_in_jupyterlab(lab, session):
    s, page = session, session.page
    source_digest = hashlib.sha256((ROOT / CHAPTER).read_bytes()).hexdigest()
    n_cells = _code_cells_in(ROOT / CHAPTER)
    t0 = time.monotonic()

    with s.step("open JupyterLab's file browser"):
        page.goto(f"{lab.url}lab/tree/{CHAPTER.parent.as_posix()}?token={lab.token}")
        item = page.locator(".jp-DirListing-item", has_text=CHAPTER.name)
        item.wait_for()

    with s.step("open the chapter with Open With -> Notebook"):
        item.click(button="right")
        page.locator(".lm-Menu-item", has_text="Open With").hover()
        page.locator(
            ".lm-Menu-item[data-command='filebrowser:open']", has_text=re.compile(r"^Notebook\s*$")
        ).click()
        page.locator(".jp-NotebookPanel:visible .jp-Notebook").wait_for()
        cells = page.locator(".jp-NotebookPanel:visible .jp-CodeCell")
        page.wait_for_function(
            "n => document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell').length >= n",
            arg=n_cells,
        )
        assert cells.count() == n_cells, (
            f"the notebook has {cells.count()} code cells, {CHAPTER} has {n_cells}"
        )

    with s.step("wait for the kernel to start (the toolbar's kernel status: idle)"):
        _wait_for_kernel(s)

    with s.step("Run -> Run All Cells"):
        page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()

    with s.step("wait until every cell has run and the kernel is idle"):
        _wait_for_run_all(s, n_cells)
    t_run = time.monotonic() - t0

    with s.step("screenshot a kernel-free player"):
        player = page.locator(".jp-NotebookPanel:visible .animation").first
        player.scroll_into_view_if_needed()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        player.screenshot(path=str(SCREENSHOTS / "live_notebook_player.png"))

    with s.step("find the widget cell's slider, dropdown and figure"):
        interact = page.locator(".jp-NotebookPanel:visible .widget-interact")
        assert interact.count() == 1, f"{interact.count()} interact widgets, expected 1"
        widget = interact.first
        widget.scroll_into_view_if_needed()
        handle = widget.locator(".widget-hslider .noUi-handle")
        track = widget.locator(".widget-hslider .noUi-target")
        readout = widget.locator(".widget-hslider .widget-readout")
        dropdown = widget.locator(".widget-dropdown select")
        for name, loc in [("slider handle", handle), ("slider track", track),
                          ("slider readout", readout), ("schedule dropdown", dropdown)]:
            assert loc.count() == 1, f"{loc.count()} {name}s in the widget, expected 1"
        figure = _wait_for_new_figure(s, widget, "")
        assert readout.inner_text().strip() == "0" and dropdown.input_value() == "linear"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        widget.screenshot(path=str(SCREENSHOTS / "live_notebook_widget_0_start.png"))

    with s.step("drag the timestep slider"):
        box, hbox = track.bounding_box(), handle.bounding_box()
        page.mouse.move(hbox["x"] + hbox["width"] / 2, hbox["y"] + hbox["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.3, hbox["y"] + hbox["height"] / 2, steps=8)
        page.mouse.up()
        new = _wait_for_new_figure(s, widget, figure)
        t_dragged = int(readout.inner_text().strip())
        assert 100 < t_dragged < 500, f"the slider reads t = {t_dragged} after a drag to 30%"
        assert new != figure
        figure = new
        widget.screenshot(path=str(SCREENSHOTS / "live_notebook_widget_1_dragged.png"))

    with s.step("move the timestep slider with the keyboard"):
        handle.focus()
        page.keyboard.press("ArrowRight")
        new = _wait_for_new_figure(s, widget, figure)
        assert int(readout.inner_text().strip()) == t_dragged + 1
        figure = new

    with s.step("pick the cosine schedule in the dropdown"):
        dropdown.select_option("cosine")
        new = _wait_for_new_figure(s, widget, figure)
        assert dropdown.input_value() == "cosine"
        assert int(readout.inner_text().strip()) == t_dragged + 1, "the slider moved"
        figure = new
        widget.screenshot(path=str(SCREENSHOTS / "live_notebook_widget_2_cosine.png"))

    with s.step("no request left localhost"):
        # The players' HTML (matplotlib's to_jshtml) would link Font Awesome 4 from a CDN;
        # ddpm_lib.viz.frames_player drops that link, and the buttons keep their icons from
        # the Font Awesome that JupyterLab ships (see the screenshot).
        assert not s.external, f"requests to other hosts (blocked): {s.external}"

    with s.step("the chapter's source is untouched"):
        assert hashlib.sha256((ROOT / CHAPTER).read_bytes()).hexdigest() == source_digest, (
            f"{CHAPTER} changed during the test, which served a copy of it from {lab.root}: "
            "did something else edit it meanwhile?"
        )
    print(f"live notebook: opened and ran all cells in {t_run:.1f} s, "
          f"with the widget checks {time.monotonic() - t0:.1f} s")
