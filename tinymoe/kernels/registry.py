"""Where the kernel sources are, which template instances each file provides, and how a
file becomes a ``cupy.RawModule``. No CuPy import until a kernel is first needed, so the
compile test (and ``import tinymoe``) work on machines without it."""

from __future__ import annotations

from pathlib import Path

from tinymoe import backend

KERNEL_DIR = Path(__file__).resolve().parent
SOURCES = ("router.cu", "plan.cu", "permute.cu", "combine.cu")

# dtype name -> the storage type of common.cuh; bfloat16 arrays come from ml_dtypes (CuPy 14+)
# or as uint16 bit patterns with storage="bf16" (see launch.py)
STORAGE = {"float32": "float", "float64": "double", "float16": "half_t", "bfloat16": "bf16_t"}
ITEMSIZE = {"float": 4, "double": 8, "half_t": 2, "bf16_t": 2}
WORD = {2: "unsigned short", 4: "unsigned int", 8: "unsigned long long"}  # copies: only the size matters


def pack_sizes(itemsize: int) -> tuple[int, int]:
    """The two pack widths a row kernel is built for: 16 bytes, and one element."""
    return 16 // itemsize, 1


def name(kernel: str, *template_args) -> str:
    """The C++ name of one instance, e.g. name("permute_rows", "unsigned int", 4)."""
    return f"{kernel}<{', '.join(str(a) for a in template_args)}>" if template_args else kernel


def _name_expressions() -> dict[str, list[str]]:
    router = [name(k, t) for k in ("router_topk", "router_topk_backward") for t in ("float", "double")]
    plan = ["plan_count", "plan_scan", "plan_capacity_drop", "plan_place"]
    permute = [name(k, w, p) for k in ("permute_rows", "zero_padding_rows")
               for size, w in WORD.items() for p in pack_sizes(size)]
    permute += [name("permute_backward", t, p) for t, size in ITEMSIZE.items() for p in pack_sizes(size)]
    combine = [name(k, t, p) for k in ("unpermute_combine", "unpermute_backward")
               for t, size in ITEMSIZE.items() for p in pack_sizes(size)]
    return {"router.cu": router, "plan.cu": plan, "permute.cu": permute, "combine.cu": combine}


NAME_EXPRESSIONS = _name_expressions()  # every instance a launcher may ask for, per file


def source(file: str) -> str:
    """The text of ``file`` with ``common.cuh`` pasted where it is included.

    NVRTC, which CuPy uses, has no include path by default, and CuPy's cache of compiled
    kernels is keyed by the source text: pasting the header in makes a change to it reach
    every kernel. ``#line`` keeps compiler messages pointing at the right file and line."""
    lines = (KERNEL_DIR / file).read_text(encoding="utf-8").splitlines()
    common = (KERNEL_DIR / "common.cuh").read_text(encoding="utf-8")
    out = []
    for number, line in enumerate(lines, start=1):
        if line.strip() == '#include "common.cuh"':
            out += ['#line 1 "common.cuh"', common, f'#line {number + 1} "{file}"']
        else:
            out.append(line)
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- on/off and modules
_enabled = True
_modules: dict = {}


def enabled() -> bool:
    """Whether the dispatch path may use the kernels (see ``tinymoe.kernels.disabled``)."""
    return _enabled


def set_enabled(flag: bool) -> None:
    global _enabled
    _enabled = bool(flag)


def function(file: str, kernel: str):
    """The compiled ``cupy.RawKernel`` for one instance, compiling its file on first use."""
    cupy = backend.cupy
    key = (file, cupy.cuda.Device().id)  # compiled for the architecture of the current GPU
    if key not in _modules:
        # no options: NVRTC's defaults (C++17; CuPy adds -ftz=true and the GPU's architecture)
        _modules[key] = cupy.RawModule(code=source(file), name_expressions=NAME_EXPRESSIONS[file])
    return _modules[key].get_function(kernel)
