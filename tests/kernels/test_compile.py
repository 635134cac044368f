"""Every kernel source compiles to PTX on a machine without a GPU.

Each .cu file is compiled as CuPy compiles it at run time (``registry.source``: the header
pasted in), with every template instance a launcher may ask for, by each compiler present:
``nvcc --ptx`` and NVRTC (the library CuPy uses; ``pip install nvidia-cuda-nvrtc-cu12``, as
in requirements-gpu.txt), called through ctypes. The test is skipped, with the reason, only
when neither exists. The PTX must contain one kernel entry per instance."""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tinymoe.kernels import registry

ARCH = "80"  # sm_80 (A100): the oldest architecture the kernels need (__match_any_sync, bf16)


def instantiate(file: str) -> str:
    """For nvcc: the source plus a table of pointers to every instance (taking a template
    kernel's address makes nvcc generate it; NVRTC gets name expressions instead, as in CuPy)."""
    pointers = ",\n".join(f"    (void*)&{expr}" for expr in registry.NAME_EXPRESSIONS[file])
    return f"{registry.source(file)}\nstatic void* const tinymoe_instances[] = {{\n{pointers}\n}};\n"


def load_nvrtc():
    """libnvrtc from the pip wheel, else from the system; None if there is none."""
    candidates = []
    try:
        import nvidia.cuda_nvrtc

        for folder in nvidia.cuda_nvrtc.__path__:
            candidates += sorted((Path(folder) / "lib").glob("libnvrtc.so*"))
    except ImportError:
        pass
    system = ctypes.util.find_library("nvrtc")
    candidates += [system] if system else []
    for candidate in candidates:
        if "alt" in Path(str(candidate)).name or "builtins" in Path(str(candidate)).name:
            continue
        try:
            return ctypes.CDLL(str(candidate))
        except OSError:
            continue
    return None


def compile_with_nvcc(file: str, tmp_path: Path) -> str:
    source = tmp_path / file
    source.write_text(instantiate(file), encoding="utf-8")
    ptx = tmp_path / f"{file}.ptx"
    result = subprocess.run(["nvcc", "--ptx", f"-arch=sm_{ARCH}", str(source), "-o", str(ptx)],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"nvcc failed on {file}:\n{result.stderr}"
    return ptx.read_text(encoding="utf-8")


def compile_with_nvrtc(nvrtc, file: str) -> str:
    """nvrtcCreateProgram, one nvrtcAddNameExpression per instance, compile, read the PTX."""

    def check(status, what):
        if status != 0:
            nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
            raise AssertionError(f"{what} failed on {file}: {nvrtc.nvrtcGetErrorString(status).decode()}")

    program = ctypes.c_void_p()
    check(nvrtc.nvrtcCreateProgram(ctypes.byref(program), registry.source(file).encode(), file.encode(), 0, None, None),
          "nvrtcCreateProgram")
    try:
        for expr in registry.NAME_EXPRESSIONS[file]:
            check(nvrtc.nvrtcAddNameExpression(program, expr.encode()), f"nvrtcAddNameExpression({expr})")
        options = [f"--gpu-architecture=compute_{ARCH}".encode(), b"-ftz=true"]  # what CuPy adds
        status = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(program, log)
        assert status == 0, f"NVRTC failed on {file}:\n{log.value.decode(errors='replace')}"
        nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size))
        ptx = ctypes.create_string_buffer(size.value)
        check(nvrtc.nvrtcGetPTX(program, ptx), "nvrtcGetPTX")
        return ptx.value.decode()
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


NVCC = shutil.which("nvcc")
NVRTC = load_nvrtc()


def test_every_kernel_file_is_listed():
    on_disk = sorted(p.name for p in registry.KERNEL_DIR.glob("*.cu"))
    assert on_disk == sorted(registry.SOURCES) == sorted(registry.NAME_EXPRESSIONS)


@pytest.mark.parametrize("file", registry.SOURCES)
def test_kernel_compiles_to_ptx(file, tmp_path):
    if NVCC is None and NVRTC is None:
        pytest.skip("neither nvcc nor NVRTC is installed (pip install nvidia-cuda-nvrtc-cu12)")
    compiled = {}
    if NVCC is not None:
        compiled["nvcc"] = compile_with_nvcc(file, tmp_path)
    if NVRTC is not None:
        compiled["NVRTC"] = compile_with_nvrtc(NVRTC, file)
    for compiler, ptx in compiled.items():
        assert f".target sm_{ARCH}" in ptx, compiler
        entries = re.findall(r"\.entry\s+(\w+)", ptx)
        assert len(entries) == len(registry.NAME_EXPRESSIONS[file]), (compiler, entries)


def test_source_pastes_the_header_and_keeps_line_numbers():
    text = registry.source("permute.cu")
    assert '#include "common.cuh"' not in text and "struct half_t" in text
    original = (registry.KERNEL_DIR / "permute.cu").read_text().splitlines()
    include_line = original.index('#include "common.cuh"') + 1
    assert f'#line {include_line + 1} "permute.cu"' in text
