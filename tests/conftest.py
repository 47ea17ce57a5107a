"""Shared test helpers: where the public test vectors live, and how to skip without them.

The vectors in ``../shared/vectors/`` (next to the repository, not inside it) are read in
place and never copied into the project. When that folder is absent, every test that asks
for them is skipped with :data:`VECTORS_SKIP_REASON`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
VECTORS_DIR = REPO_ROOT.parent / "shared" / "vectors"
VECTORS_SKIP_REASON = (
    "../shared/vectors not present: public test vectors are not shipped with the repo"
)


def vectors_dir() -> Path:
    """The public vectors folder, ``<repo>/../shared/vectors``; skips the caller if absent.

    Works inside a test or fixture (the test is skipped) and at collection time (raises
    ``pytest.skip.Exception``, which a collector can turn into a skipped parameter).
    """
    if not VECTORS_DIR.is_dir():
        pytest.skip(VECTORS_SKIP_REASON)
    return VECTORS_DIR


@pytest.fixture(name="vectors_dir")
def _vectors_dir_fixture() -> Path:
    return vectors_dir()


# the end-to-end fixture (a real log server per test) for every test module
from e2e import env  # noqa: E402,F401

# PostgreSQL: a throwaway cluster per session, an empty database per test
from pgcluster import pg_cluster, pg_url  # noqa: E402,F401


@pytest.fixture(scope="session")
def ray_available() -> Iterator[bool]:
    """One local Ray instance (2 CPUs) for the whole session — ``ray.init`` takes seconds
    — or False when Ray is not installed (a failure with ``POTD_REQUIRE_RAY=1``, which
    .ci/run sets)."""
    try:
        import ray
    except ImportError:
        if os.environ.get("POTD_REQUIRE_RAY") == "1":
            pytest.fail("Ray is not installed (pip install 'potd[ray]') "
                        "[POTD_REQUIRE_RAY=1 forbids skipping]", pytrace=False)
        yield False
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield True
    ray.shutdown()


@pytest.fixture
def ray_local(ray_available: bool) -> None:
    """The session's local Ray instance; skips the test without Ray."""
    if not ray_available:
        pytest.skip("Ray is not installed (pip install 'potd[ray]')")
