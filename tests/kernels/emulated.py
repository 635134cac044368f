"""Run the kernels' own CUDA C on the CPU, through the real launchers.

``build()`` compiles every .cu file (as ``registry.source`` gives it) with
``emulator/cuda_emu.h`` (each CUDA thread a fiber on one CPU thread) into a shared library,
with g++. ``EmulatedKernel`` is called like a ``cupy.RawKernel`` (grid, block, args), and
``NumpyAsCupy`` is the sliver of the CuPy API the launchers use, on NumPy arrays. With
``launch.function`` and ``backend.cupy`` swapped for these, ``tinymoe.kernels.launch`` runs
unchanged on a machine without a GPU.

This checks the kernels' index arithmetic, launch shapes, barriers and shuffles, and the
launchers' arguments; not the GPU's memory model, timing, or CuPy's argument passing."""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from tinymoe.kernels import registry

HERE = Path(__file__).resolve().parent / "emulator"
GXX = shutil.which("g++")


def _wrapper_source() -> str:
    parts = ['#include "cuda_emu.h"', "#include <functional>", "#include <string>", "#include <unordered_map>"]
    parts += [registry.source(f) for f in registry.SOURCES]
    entries = [f'    {{"{expr}", [](unsigned g, unsigned b, void** a) {{ return run_grid(&{expr}, g, b, a); }}}},'
               for f in registry.SOURCES for expr in registry.NAME_EXPRESSIONS[f]]
    parts.append(
        "using Launcher = std::function<int(unsigned, unsigned, void**)>;\n"
        "static const std::unordered_map<std::string, Launcher> kernels = {\n" + "\n".join(entries) + "\n};\n"
        'extern "C" int tinymoe_launch(const char* name, unsigned grid, unsigned block, void** args) {\n'
        "    auto it = kernels.find(name);\n"
        "    if (it == kernels.end()) return 2;\n"
        "    return it->second(grid, block, args);\n"
        "}\n")
    return "\n".join(parts)


_library = None


def build():
    """The emulator library (built once per source version, cached in the temp folder)."""
    global _library
    if _library is None:
        source = _wrapper_source()
        digest = hashlib.sha1((source + (HERE / "cuda_emu.h").read_text()).encode()).hexdigest()[:12]
        folder = Path(tempfile.gettempdir()) / "tinymoe_emulator"
        folder.mkdir(exist_ok=True)
        lib = folder / f"kernels_{digest}.so"
        if not lib.exists():
            cpp = folder / f"kernels_{digest}.cpp"
            cpp.write_text(source)
            result = subprocess.run([GXX, "-std=c++20", "-O1", "-U_FORTIFY_SOURCE", "-fPIC", "-shared", f"-I{HERE}",
                                     str(cpp), "-o", str(lib) + ".tmp"], capture_output=True, text=True)
            if result.returncode:
                raise RuntimeError(f"g++ failed:\n{result.stderr[-4000:]}")
            Path(str(lib) + ".tmp").rename(lib)
        _library = ctypes.CDLL(str(lib))
        _library.tinymoe_launch.restype = ctypes.c_int
    return _library


_SCALARS = {np.int32: ctypes.c_int32, np.float32: ctypes.c_float, np.float64: ctypes.c_double}


class EmulatedKernel:
    """Called like a cupy.RawKernel: kernel((grid,), (block,), args)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, grid, block, args):
        (grid,), (block,) = grid, block
        assert block % 32 == 0 and 0 < block <= 1024 and grid > 0, (self.name, grid, block)
        values = []
        for a in args:
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous, self.name
                values.append(ctypes.c_void_p(a.ctypes.data))
            elif type(a) in _SCALARS:
                values.append(_SCALARS[type(a)](a))
            else:
                raise TypeError(f"{self.name}: kernel arguments must be arrays or NumPy scalars, got {type(a)}")
        pointers = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        status = build().tinymoe_launch(self.name.encode(), grid, block, pointers)
        assert status != 2, f"no emulated kernel named {self.name}"
        assert status == 0, f"{self.name} deadlocked: some threads wait at a barrier that others never reach"


def function(file: str, kernel: str):
    assert kernel in registry.NAME_EXPRESSIONS[file], kernel
    return EmulatedKernel(kernel)


class NumpyAsCupy:
    """The CuPy calls the launchers make, on NumPy; new arrays are filled with a poison byte
    (as the GPU tests' allocator does) so that an element no kernel wrote shows up."""

    int32, int64 = np.int32, np.int64

    class ndarray:  # matches no array: array_module() keeps saying NumPy
        pass

    def __init__(self, poison: int = 0xFF):
        self.poison = poison

    def _poisoned(self, array):
        array.view(np.uint8).fill(self.poison)
        return array

    def empty(self, shape, dtype=np.float64):
        return self._poisoned(np.empty(shape, dtype))

    def empty_like(self, a):
        return self._poisoned(np.empty_like(a))

    zeros = staticmethod(np.zeros)
    asarray = staticmethod(np.asarray)
    concatenate = staticmethod(np.concatenate)

    @staticmethod
    def ascontiguousarray(a, dtype=None):
        return np.ascontiguousarray(a, dtype=dtype)


def available() -> bool:
    return GXX is not None
