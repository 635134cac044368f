"""Build the lesson notebooks from their readable sources, and run them.

Each lesson is written as a plain Python file in ``lessons/src/`` ("percent" format:
``# %%`` starts a code cell, ``# %% [markdown]`` a text cell whose lines start with
``# ``), so a review reads a normal diff. This script turns each source into
``lessons/NN_name.ipynb``, executes it from a fresh kernel and saves the outputs.

    python lessons/build.py                 # build and execute every lesson (full mode)
    python lessons/build.py 03 04           # only these lessons
    TINYMOE_FAST=1 python lessons/build.py  # fast mode: small experiments (what CI runs)

The hand-written MoE lesson (08) is written once, with its solutions between
``# BLANK name`` and ``# END BLANK`` lines; the build also writes the exercise notebook
(``08_..._exercise.ipynb``) in which each blank becomes ``raise NotImplementedError``.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

LESSONS = Path(__file__).resolve().parent
SOURCES = LESSONS / "src"
BLANK = re.compile(r"^(?P<indent>\s*)# BLANK (?P<name>\w+)\s*$")
END_BLANK = re.compile(r"^\s*# END BLANK\s*$")


def read_cells(source: Path) -> list[tuple[str, str]]:
    """[(kind, text)] from a percent-format file; kind is "markdown" or "code"."""
    cells, kind, lines = [], None, []

    def flush():
        text = "\n".join(lines).strip("\n")
        if kind is not None and text:
            cells.append((kind, text))

    for line in source.read_text(encoding="utf-8").splitlines():
        if line.startswith("# %%"):
            flush()
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        elif kind == "markdown":
            lines.append(line[2:] if line.startswith("# ") else line.lstrip("#"))
        elif kind is not None:
            lines.append(line)
    flush()
    return cells


def blanks(code: str) -> list[str]:
    """Names of the ``# BLANK name`` regions in a code cell."""
    return [m.group("name") for m in map(BLANK.match, code.splitlines()) if m]


def as_exercise(code: str) -> str:
    """The code with every blank region replaced by a NotImplementedError for the learner."""
    out, inside = [], False
    for line in code.splitlines():
        start = BLANK.match(line)
        if start:
            inside = True
            out.append(f'{start.group("indent")}raise NotImplementedError("your turn: {start.group("name")}")')
        elif END_BLANK.match(line):
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def solution_code(code: str) -> str:
    """The code with the blank markers removed (the solutions notebook)."""
    return "\n".join(line for line in code.splitlines() if not (BLANK.match(line) or END_BLANK.match(line)))


def make_notebook(cells, exercise: bool = False) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for kind, text in cells:
        if kind == "markdown":
            nb.cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            nb.cells.append(nbformat.v4.new_code_cell(as_exercise(text) if exercise else solution_code(text)))
    return nb


def notebook_path(source: Path, exercise: bool = False) -> Path:
    return LESSONS / f"{source.stem}{'_exercise' if exercise else ''}.ipynb"


def execute(nb, timeout: int = 1200) -> nbformat.NotebookNode:
    """Run every cell from a fresh kernel, in the lessons folder (errors stop the run)."""
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(LESSONS)}}).execute()
    return nb


def build(source: Path) -> None:
    cells = read_cells(source)
    print(f"executing {source.name} ...", flush=True)
    nbformat.write(execute(make_notebook(cells)), notebook_path(source))
    if any(blanks(text) for kind, text in cells if kind == "code"):  # the exercise: not executed
        nbformat.write(make_notebook(cells, exercise=True), notebook_path(source, exercise=True))


def main(selected) -> None:
    sources = sorted(SOURCES.glob("[0-9][0-9]_*.py"))
    for source in sources:
        if not selected or source.name[:2] in selected:
            build(source)
    mode = "fast" if os.environ.get("TINYMOE_FAST") else "full"
    print(f"built {len(sources) if not selected else len(selected)} lesson(s) in {mode} mode")


if __name__ == "__main__":
    main(sys.argv[1:])
