"""Shared fixtures: every test starts from the same seed; ``device`` runs a test on the CPU
and, where CuPy sees a GPU, again on CUDA (skipped cleanly otherwise)."""

import pytest

import tinymoe as tm
from tinymoe import backend

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not backend.cuda_available(), reason="needs CuPy and a GPU")],
    ),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    tm.manual_seed(0)
