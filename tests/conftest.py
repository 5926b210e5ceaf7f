from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
REPO = TESTS.parent
SHARED = REPO.parent / "shared"
EMOJI_TAR = SHARED / "data" / "emoji-noto-64" / "train-000000.tar"

sys.path.insert(0, str(TESTS))  # for spec_judge and interrupt


@pytest.fixture(scope="session")
def emoji_tar() -> Path:
    if not EMOJI_TAR.exists():
        pytest.skip(f"shared data set not found at {EMOJI_TAR}")
    return EMOJI_TAR
