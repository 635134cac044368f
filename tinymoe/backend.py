"""NumPy or CuPy: one code path for both (DeZero's ``xp = array_module(x)`` idea).

Every op asks ``xp = array_module(x)`` and then writes ``xp.exp(x)``, ``xp.matmul(a, b)``...
so the same line runs on the CPU (NumPy) and on an NVIDIA GPU (CuPy). CuPy is optional:
tinymoe imports and runs without it, and asking for ``device="cuda"`` without it raises a
``RuntimeError`` that says how to get it.

The library draws all its randomness (initialisation, dropout, router noise) from one
generator per device, seeded by :func:`manual_seed`, so the same seed gives the same run.
"""

from __future__ import annotations

import numpy as np

try:  # the GPU extra: pip install -r requirements-gpu.txt
    import cupy
except ImportError:  # pragma: no cover - depends on the machine
    cupy = None

DEVICES = ("cpu", "cuda")

GPU_FIX = (
    "install the GPU extra with `pip install -r requirements-gpu.txt` (CuPy for CUDA 12) "
    "on a machine with an NVIDIA GPU, or use device='cpu'"
)


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # CuPy installed but no driver or no device
        return False


def check_device(device: str) -> str:
    """Validate a device name; raise a RuntimeError naming the fix if CUDA is missing."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and not cuda_available():
        reason = "CuPy is not installed" if cupy is None else "CuPy sees no GPU"
        raise RuntimeError(f"device='cuda' was requested but {reason}: {GPU_FIX}")
    return device


def array_module(x):
    """The array library that owns ``x``: ``cupy`` for a CuPy array, else ``numpy``."""
    if cupy is not None and isinstance(x, cupy.ndarray):
        return cupy
    return np


def xp_of(device: str):
    """The array library for a device name."""
    return cupy if check_device(device) == "cuda" else np


def device_of(x) -> str:
    """"cuda" for a CuPy array, "cpu" for anything else."""
    return "cuda" if array_module(x) is not np else "cpu"


def to_device(x, device: str):
    """Copy an array to ``device`` (no copy when it is already there)."""
    if device_of(x) == check_device(device):
        return x
    return cupy.asarray(x) if device == "cuda" else cupy.asnumpy(x)


def to_numpy(x) -> np.ndarray:
    """A NumPy array with the same values (copied from the GPU if needed)."""
    return x if array_module(x) is np else cupy.asnumpy(x)


def add_at(target, index, values) -> None:
    """``target[index] += values`` in place, where repeated indices add up (``np.add.at``)."""
    if array_module(target) is np:
        np.add.at(target, index, values)
    else:  # CuPy spells it cupyx.scatter_add
        import cupyx

        cupyx.scatter_add(target, index, values)


def special(xp):
    """``scipy.special`` or ``cupyx.scipy.special`` (for ``erf``), matching ``xp``."""
    if xp is np:
        import scipy.special

        return scipy.special
    import cupyx.scipy.special

    return cupyx.scipy.special


# ----------------------------------------------------------------------------- randomness
_seed = 0
_generators: dict = {}


def manual_seed(seed: int) -> None:
    """Seed the NumPy (and, when used, CuPy) generators that tinymoe draws from."""
    global _seed
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    _seed = int(seed)
    _generators.clear()  # each device's generator restarts from the new seed on first use


def rng(device: str = "cpu"):
    """The library's random generator for ``device`` (``numpy``/``cupy`` ``Generator``)."""
    if device not in _generators:
        xp = xp_of(device)
        _generators[device] = xp.random.default_rng(_seed)
    return _generators[device]


def get_rng_state() -> dict:
    """The seed and the CPU generator's state, so a checkpoint can resume the same stream."""
    state = {"seed": _seed}
    if "cpu" in _generators:
        state["cpu"] = _generators["cpu"].bit_generator.state
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    manual_seed(state["seed"])
    if "cpu" in state:
        rng("cpu").bit_generator.state = state["cpu"]
