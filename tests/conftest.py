"""Shared fixtures: one real local Ray per test session, and the shared corpus when it is present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REDPAJAMA_MINI = ROOT.parent / "shared" / "corpus" / "redpajama-mini"
PROVENANCE = ROOT.parent / "shared" / "corpus" / "provenance"


@pytest.fixture(scope="session")
def ray_session():
    """A real local Ray, started once for the whole run (2 CPUs, like CI)."""
    from slimpipe.engine import ensure_ray, shutdown_ray

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    ensure_ray(num_cpus=2)
    yield
    shutdown_ray()


@pytest.fixture(scope="session")
def redpajama_mini() -> Path:
    """``../shared/corpus/redpajama-mini``; tests that need it skip on a user's clone, which has no ``../shared``."""
    if not REDPAJAMA_MINI.is_dir():
        pytest.skip(f"shared corpus not found at {REDPAJAMA_MINI} (only CI and developers have ../shared)")
    return REDPAJAMA_MINI


@pytest.fixture(scope="session")
def provenance_dir() -> Path:
    if not PROVENANCE.is_dir():
        pytest.skip(f"shared provenance not found at {PROVENANCE}")
    return PROVENANCE
