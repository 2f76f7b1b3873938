"""The Makefile's install choices, read with `make -n` (what it would run; nothing is downloaded)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(*args: str) -> subprocess.CompletedProcess:
    """What `make -B` (every target out of date) would run, without running it."""
    return subprocess.run(["make", "-n", "-B", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_default_install_never_contacts_the_pytorch_index():
    out = dry_run("venv")
    assert out.returncode == 0, out.stderr
    assert "download.pytorch.org" not in out.stdout and "--index-url" not in out.stdout
    assert 'pip install -e ".[notebooks,book,test]"' in out.stdout


def test_torch_cpu_installs_the_cpu_build_first_with_the_projects_own_ranges():
    out = dry_run("venv", "TORCH=cpu")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    index = next(i for i, line in enumerate(lines) if "--index-url https://download.pytorch.org/whl/cpu" in line)
    project = next(i for i, line in enumerate(lines) if 'pip install -e ".[notebooks,book,test]"' in line)
    assert index < project                                  # torch first, so the project's install keeps it
    asked = {Requirement(r).name: str(Requirement(r).specifier) for r in re.findall(r'"([a-z]+[<>=!~][^"]*)"',
                                                                                      lines[index])}
    declared = {Requirement(r).name: str(Requirement(r).specifier)
                for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                if Requirement(r).name in ("torch", "torchvision")}
    assert asked == declared                                # the same ranges as pyproject.toml
    assert "torch.version.cuda is not None" in out.stdout   # a venv holding the CUDA build is refused, clearly
    assert ".installed-ddpm-lib-torch-cpu" in out.stdout     # and the venv remembers which build it holds


def test_an_unknown_torch_choice_is_refused_with_the_choices():
    out = dry_run("venv", "TORCH=gpu")
    assert out.returncode != 0
    assert "TORCH=gpu is not a choice" in out.stderr and "TORCH=cpu" in out.stderr


def test_pdf_builds_with_latex_and_says_which_debian_packages_it_needs():
    out = dry_run("pdf")
    assert out.returncode == 0, out.stderr
    assert "--builder pdflatex" in out.stdout and "book/_build/latex/ddpm-book.pdf" in out.stdout
    # without TeX Live, the message names every package to install (texlive-fonts-extra: the bbm fonts)
    install = re.search(r"apt-get install --no-install-recommends ([a-z0-9 -]+)", out.stdout)
    assert install, "the recipe no longer says how to install TeX Live"
    assert {"texlive-xetex", "texlive-fonts-extra", "latexmk", "poppler-utils"} <= set(install[1].split())
