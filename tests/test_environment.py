"""environment.yml (conda) must describe the same dependencies as pyproject.toml (pip)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

# Conda packages allowed besides the pip section: not Python dependencies of the project.
CONDA_TOOLS = {"python", "pip", "nodejs"}


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf8"))


@pytest.fixture(scope="module")
def env() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf8"))


def _conda_and_pip(env: dict) -> tuple[list[str], list[str]]:
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"unexpected section {dep}"
            pip.extend(dep["pip"])
        else:
            conda.append(str(dep))
    return conda, pip


def _key(req: Requirement) -> tuple[str, str, str]:
    return (
        canonicalize_name(req.name),
        str(SpecifierSet(str(req.specifier))),
        str(req.marker or ""),
    )


def _by_name(reqs: list[Requirement], where: str) -> dict[str, tuple[str, str, str]]:
    out: dict[str, tuple[str, str, str]] = {}
    for r in reqs:
        name = canonicalize_name(r.name)
        assert name not in out, f"{r.name} is listed twice in {where}"
        out[name] = _key(r)
    return out


def test_environment_matches_pyproject(pyproject, env):
    project = pyproject["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in sorted(project.get("optional-dependencies", {})):
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]

    _conda, pip = _conda_and_pip(env)
    listed = [Requirement(line) for line in pip if not line.startswith("-")]

    want = _by_name(wanted, "pyproject.toml")
    have = _by_name(listed, "environment.yml")
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    differ = sorted(
        f"{n}: pyproject {want[n][1] or 'any'} vs environment.yml {have[n][1] or 'any'}"
        for n in set(want) & set(have)
        if want[n] != have[n]
    )
    assert not (missing or extra or differ), (
        "environment.yml and pyproject.toml disagree:\n"
        f"  missing from environment.yml: {missing}\n"
        f"  not in pyproject.toml: {extra}\n"
        f"  different versions: {differ}"
    )


def test_environment_installs_the_project(env):
    _conda, pip = _conda_and_pip(env)
    options = [line.split() for line in pip if line.startswith("-")]
    assert ["-e", "."] in options, "environment.yml should install the project: `- -e .`"


def test_conda_section_has_only_tools(pyproject, env):
    conda, _pip = _conda_and_pip(env)
    assert "conda-forge" in env.get("channels", [])
    names = {c.split("=")[0].split("<")[0].split(">")[0].strip() for c in conda}
    assert names <= CONDA_TOOLS, (
        f"conda packages {sorted(names - CONDA_TOOLS)}: list Python dependencies in the pip "
        "section, with pyproject.toml's names and specifiers"
    )
    assert {"python", "pip"} <= names

    python = next(c for c in conda if c.startswith("python"))
    version = python.split("=", 1)[1].lstrip("=")
    requires = SpecifierSet(pyproject["project"]["requires-python"])
    assert Version(version) in requires, f"{python} does not satisfy requires-python {requires}"
