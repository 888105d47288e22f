"""Shared fixtures: small synthetic planes and the optional third-party data folder."""

import os
from pathlib import Path

import numpy as np
import pytest

from fm2s.settings import make_settings
from fm2s.synthetic import clean_plane, noisy_plane

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


def skip_unless_in_ci(reason: str) -> None:
    """Skip a test that needs a system service or program, except in CI.

    ``.ci/run`` installs those (SLURM, Chromium) and sets ``FM2S_CI=1``; there a missing one
    is a failure, never a silent skip.
    """
    if os.environ.get("FM2S_CI") == "1":
        pytest.fail(f"{reason} (FM2S_CI=1: CI must provide it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def tiny_settings():
    """A short schedule: enough to exercise every code path in well under a second."""
    return make_settings("confocal", "fast", steps=6, crop_size=24, batch_size=2)


@pytest.fixture(scope="session")
def plane8() -> np.ndarray:
    return noisy_plane(clean_plane((40, 36), seed=3, blobs=6, filaments=2), seed=4)
