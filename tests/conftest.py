"""Shared test set-up: the numerics decisions of this test session live in a cache of its own."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _numerics_cache(tmp_path_factory):
    """Point ``DDPM_CACHE_DIR`` at a fresh folder, so no test reads or writes the user's cache (subprocesses inherit it)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DDPM_CACHE_DIR", str(tmp_path_factory.mktemp("ddpm_cache")))
    yield
    mp.undo()
