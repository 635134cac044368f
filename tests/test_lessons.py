"""The lessons: each committed notebook matches its source and has real outputs, and every
lesson executes top to bottom from a fresh kernel in fast mode (TINYMOE_FAST=1)."""

import importlib.util
from pathlib import Path

import nbformat
import pytest

LESSONS = Path(__file__).resolve().parent.parent / "lessons"
spec = importlib.util.spec_from_file_location("lesson_build", LESSONS / "build.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)

SOURCES = sorted((LESSONS / "src").glob("[0-9][0-9]_*.py"))


def test_there_are_lessons():
    assert SOURCES, "no lesson sources in lessons/src"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_notebook_matches_its_source_and_keeps_its_outputs(source):
    path = build.notebook_path(source)
    assert path.exists(), f"{path.name} is missing: run python lessons/build.py {source.name[:2]}"
    committed = nbformat.read(path, as_version=4)
    expected = build.make_notebook(build.read_cells(source))
    assert [c.source for c in committed.cells] == [c.source for c in expected.cells], (
        f"{path.name} is out of date with {source.name}: rebuild it")
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{path.name} has cells that were never executed"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"], f"{path.name} saved an error"
    assert any(o.output_type == "display_data" for c in code for o in c.outputs), f"{path.name} shows no plot"


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_lesson_runs_in_fast_mode(source, monkeypatch):
    monkeypatch.setenv("TINYMOE_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    build.execute(build.make_notebook(build.read_cells(source)), timeout=600)


def test_every_blank_of_the_exercise_is_checked():
    from tinymoe import check

    sources_with_blanks = [s for s in SOURCES if "# BLANK " in s.read_text(encoding="utf-8")]
    for source in sources_with_blanks:
        names = [n for kind, text in build.read_cells(source) if kind == "code" for n in build.blanks(text)]
        assert names, source.name
        missing = [n for n in names if n not in check.CHECKERS]
        assert not missing, f"blanks without a checker in tinymoe.check: {missing}"
        exercise = nbformat.read(build.notebook_path(source, exercise=True), as_version=4)
        text = "\n".join(c.source for c in exercise.cells)
        assert all(f'your turn: {n}"' in text for n in names)

