"""Shared test set-up: the numerics cache of the session, and the markers that split the tests.

Markers (registered in pyproject.toml, ``--strict-markers``), applied here from
where a test lives, so that no test file has to carry them:

* ``notebook``: every nbval cell (``notebooks/*.ipynb``, collected by ``--nbval-lax``);
* ``browser``: needs the built site (``make book``) or a browser: the tests of
  ``test_site.py`` that read the site, and ``test_live_notebook.py``;
* ``distributed``: launches several processes (torchrun, gloo): ``test_distributed.py``;
* ``slow``: the tests in ``SLOW`` below, measured.

``make check`` runs everything else (the fast library tests, in under two
minutes on a 2-core CPU); ``make test`` runs everything.

No test may depend on how fast or how busy the machine is: time budgets run on a
fake clock (``ddpm_lib.training.clock``, ``numerics.probe(clock=...)``), compared
runs pin their numerics, and waits on other processes have generous deadlines
that only guard against a hang (hypothesis, too, runs with no deadline).
"""

import warnings
from pathlib import Path

import pytest

# Library tests that take more than about 2.5 s, measured on 2 cores of an AMD EPYC (AVX-512 with
# bf16) under the AVX2 cap of `make test`, with `pytest tests -m slow --durations=40` on an otherwise
# quiet machine (load average about 1.3): seconds of call, + set-up of a fixture only they use. (On a
# machine loaded by other jobs, load average about 4, every figure was 2 to 25 times as long.)
# A node id without parameters marks every parametrisation. Together they take about 150 s, three
# quarters of the library tests' time; the rest is `make check`. Keep it measured: a test that takes
# more than about 2.5 s goes here (`pytest tests -m "not slow and not notebook and not browser and not
# distributed" --durations=20` shows them).
SLOW = {
    "tests/test_bench.py::test_train_throughput_profile_splits_the_step": 27.9,
    "tests/test_training.py::test_killed_run_resumes_to_the_same_model": 13.7 + 12.6,
    "tests/test_bench.py::test_benches_name_the_variant_auto_picks": 14.1 + 3.2,
    "tests/test_ablation.py::test_toy_ablation_runs_and_resumes": 13.4 + 0.3,
    "tests/test_data.py::test_npm_fallback": 12.1,
    "tests/test_data.py::test_npm_fallback_with_bad_checksum_installs_nothing_bad": 12.0,
    "tests/test_cli.py::test_info_as_subprocess": 9.2,
    "tests/test_ablation.py::test_a_variant_added_later_is_timed_beside_the_baseline_again": 6.5 + 0.2,
    "tests/test_numerics.py::test_the_cap_is_part_of_the_cache_key": 6.1,
    "tests/test_parameterisation.py::test_an_exported_batchnorm_model_carries_statistics_of_its_own_weights": 5.6,
    "tests/test_cli.py::test_the_ablation_switches_reach_the_checkpoint": 5.3,
    "tests/test_cold.py::test_cold_training_learns_and_checkpoints": 4.6,
    "tests/test_cli.py::test_conditional_checkpoint_draws_one_row_per_digit": 1.0 + 2.2,
    "tests/test_classifier.py::test_shipped_classifier_accuracy": 2.7,
}

try:        # property-based tests: no per-example deadline, which a loaded machine would miss
    from hypothesis import settings as _hypothesis_settings
except ImportError:
    pass
else:
    _hypothesis_settings.register_profile("ddpm", deadline=None)
    _hypothesis_settings.load_profile("ddpm")

_BROWSER_FILES = {"test_live_notebook.py"}
_SITE_FIXTURE = "site"            # test_site.py: the tests that need the built site ask for it (maybe indirectly)
_DISTRIBUTED_FILES = {"test_distributed.py"}


@pytest.fixture(autouse=True, scope="session")
def _numerics_cache(tmp_path_factory):
    """Point ``DDPM_CACHE_DIR`` at a fresh folder, so no test reads or writes the user's cache (subprocesses inherit it)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DDPM_CACHE_DIR", str(tmp_path_factory.mktemp("ddpm_cache")))
    yield
    mp.undo()


def _slow_key(item: pytest.Item) -> str | None:
    """The entry of ``SLOW`` that names ``item`` (its node id, or its node id without parameters), if any."""
    nodeid = item.nodeid                       # relative to the rootdir: tests/test_x.py::test_y[param]
    base = nodeid.split("[", 1)[0]
    return nodeid if nodeid in SLOW else base if base in SLOW else None


@pytest.hookimpl(tryfirst=True)      # before `-m` deselects by marker
def pytest_collection_modifyitems(config, items):
    used, collected_files = set(), set()
    for item in items:
        path = Path(str(item.path))
        if path.suffix == ".ipynb":
            item.add_marker(pytest.mark.notebook)
            continue
        collected_files.add("tests/" + path.name)
        if path.name in _BROWSER_FILES or (path.name == "test_site.py" and _SITE_FIXTURE in item.fixturenames):
            item.add_marker(pytest.mark.browser)
        if path.name in _DISTRIBUTED_FILES:
            item.add_marker(pytest.mark.distributed)
        key = _slow_key(item)
        if key is not None:
            item.add_marker(pytest.mark.slow)
            used.add(key)
    # a test renamed or removed leaves its entry behind: say so, rather than let `make check` grow silently
    stale = [k for k in SLOW if k not in used and k.split("::", 1)[0] in collected_files
             and not config.getoption("keyword") and not config.getoption("deselect")]
    if stale and all("::" not in str(a) for a in config.args):
        warnings.warn(f"tests/conftest.py: SLOW names tests that were not collected: {', '.join(stale)}",
                      stacklevel=1)
