"""The README's walkthrough, run as written on a generated set of every layout, so the README
cannot drift from what the commands do: each command exits 0 and writes the file its comment
promises, and every pandas snippet of README.md and manifests/README.md prints a short table."""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the virtual environment's curate and train
DATASET = "~/data/bone-fracture"  # the README's example dataset folder
NEW_FILMS = "~/data/new-films"  # the films it predicts: here, the generated set again
#: Settings that keep a CPU run short; appended to the README's `train` command.
FAST_TRAIN = ["--epochs", "1", "--image-size", "64", "--batch-size", "16", "--workers", "0"]
#: Originals per class: MURA's patients hold several studies, so it needs more images for the
#: seven patients a 0.15 test share asks for.
PER_CLASS = {"mura": "20"}
#: Lines a snippet may print: a table worth reading, not one line per file or per hash.
MAX_SNIPPET_LINES = 40

pytestmark = pytest.mark.slow


def code_blocks(markdown: Path, language: str) -> list[str]:
    """The fenced code blocks of ``language`` in ``markdown``."""
    return re.findall(rf"```{language}\n(.*?)```", markdown.read_text(), flags=re.DOTALL)


def walkthrough() -> list[tuple[list[str], str | None]]:
    """The README walkthrough's commands, each with the file its comment says it writes."""
    block = next(b for b in code_blocks(REPOSITORY / "README.md", "bash") if DATASET in b)
    commands = []
    for line in block.splitlines():
        command, _, comment = line.partition("#")
        words = shlex.split(command)
        if not words or words[0] not in ("curate", "train"):
            continue  # `source .venv/bin/activate`
        promised = re.search(r"-> (\S+)", comment)
        commands.append((words, promised.group(1) if promised else None))
    return commands


def run(words: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """A command as a user types it, in ``cwd``, with the environment's own executables."""
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "100"}
    return subprocess.run(words, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_walkthrough_names_every_stage_and_its_output():
    commands = walkthrough()
    stages = [words[1] for words, _ in commands if words[0] == "curate"]
    assert stages == ["scan", "embed", "dedupe", "outliers", "split", "report"]
    assert [promised for _, promised in commands][:5] == [
        f"manifests/{stage}.parquet" for stage in ("scan", "embeddings", "dedupe", "outliers")
    ] + ["manifests/split.parquet"]


@pytest.mark.parametrize("layout", ["class", "split-class", "class-split", "mura", "csv"])
def test_the_readme_walkthrough_runs_on_every_layout(tmp_path, monkeypatch, layout):
    per_class = PER_CLASS.get(layout, "8")
    synth = run(
        ["curate", "synth", "data", "--layout", layout, "--size", "96", "--per-class", per_class],
        tmp_path,
    )
    assert synth.returncode == 0, synth.stderr
    for words, promised in walkthrough():
        words = [str(tmp_path / "data") if word in (DATASET, NEW_FILMS) else word for word in words]
        if words[:2] == ["curate", "scan"] and layout == "csv":
            refused = run(words, tmp_path)  # as written: the labels CSV is found and asked for
            assert refused.returncode == 2
            assert f"--labels {tmp_path / 'data' / 'labels.csv'}" in refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1
            words = [*words, "--labels", str(tmp_path / "data" / "labels.csv")]
        if words[:2] == ["train", "--manifest"]:
            words = [*words, *FAST_TRAIN]
        if "runs/<name>" in words:
            (run_folder,) = (tmp_path / "runs").iterdir()
            words[words.index("runs/<name>")] = str(run_folder)
        result = run(words, tmp_path)
        assert result.returncode == 0, f"{shlex.join(words)}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr
        if promised is not None:
            assert (tmp_path / promised).is_file(), f"{shlex.join(words)} wrote no {promised}"
        if words[:2] == ["curate", "scan"]:
            assert f"layout: {layout}" in result.stdout
    assert (tmp_path / "report.html").is_file()
    monkeypatch.chdir(
        tmp_path
    )  # the snippets read manifests/ from the current folder, as a user's do
    for markdown in (REPOSITORY / "README.md", REPOSITORY / "manifests" / "README.md"):
        namespace: dict = {}  # a file's snippets build on one another, as in one notebook
        for snippet in code_blocks(markdown, "python"):
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(shown(snippet), str(markdown), "exec"), namespace)
            text = printed.getvalue()
            lines = text.strip().splitlines()
            assert 0 < len(lines) <= MAX_SNIPPET_LINES, f"{snippet}\n{text}"
            assert not re.search(r"\b[0-9a-f]{64}\b", text), f"{snippet} prints hashes"
            assert "Series([]" not in text and "Empty DataFrame" not in text, snippet


def shown(snippet: str) -> ast.Module:
    """``snippet`` as a notebook runs it: the value of each bare expression is printed."""
    tree = ast.parse(snippet)
    for index, node in enumerate(tree.body):
        if isinstance(node, ast.Expr) and not (
            isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "print"
        ):
            call = ast.Call(func=ast.Name("print", ast.Load()), args=[node.value], keywords=[])
            tree.body[index] = ast.copy_location(ast.Expr(call), node)
    return ast.fix_missing_locations(tree)
