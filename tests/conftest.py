"""Shared test setup: headless plotting, offline HF libraries, few torch threads (2-core CI)."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# `make test` runs the files in parallel (pytest-xdist, one worker per core): each worker then keeps to one thread
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and a shared 2-core box punishes 2-thread jobs.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def rows():
    """The ``variants`` section of params.yaml (ablation rows + the peers' ``extra`` rows)."""
    from d2lib.core import config

    return config.load_section("variants")
