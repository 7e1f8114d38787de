"""Run every command of ``docs/tutorial.md``, in order, in a fresh folder.

```bash`` blocks run in ``bash -euo pipefail`` with the venv's ``connectome``
first on ``PATH``; ```python`` blocks are exec'd in one shared namespace with
the working directory set to the tutorial folder. Other fences (```text``) are
illustrations and are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial.md"
REPO = TUTORIAL.parent.parent

_FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_STEP = re.compile(r"^## Step (\d+):", re.MULTILINE)
STEPS = 8
RUNNABLE = ("bash", "python")


def _blocks(text: str) -> list[tuple[int, str, str]]:
    """(step number, language, code) of every fenced block, in document order (step 0: before step 1)."""
    steps = [(m.start(), int(m.group(1))) for m in _STEP.finditer(text)]
    blocks = []
    for m in _FENCE.finditer(text):
        step = max((n for pos, n in steps if pos < m.start()), default=0)
        blocks.append((step, m.group(1), m.group(2)))
    return blocks


def test_tutorial_has_a_runnable_block_per_step():
    blocks = _blocks(TUTORIAL.read_text())
    steps = [int(m.group(1)) for m in _STEP.finditer(TUTORIAL.read_text())]
    assert steps == list(range(1, STEPS + 1)), f"tutorial steps are {steps}"
    for step in range(1, STEPS + 1):
        langs = [lang for s, lang, _ in blocks if s == step]
        assert any(lang in RUNNABLE for lang in langs), f"step {step} has no bash/python block: {langs}"
    text = TUTORIAL.read_text()
    for needle in ("connectome sample", "connectome ingest", "connectome run", "connectome evaluate",
                   "connectome report", "--format neuprint", "--format precomputed",
                   "Connectome.load", "neurons(type=", "adjacencies(", "connectivity_by_type(",
                   "shortest_paths(", "--scheduler tcp://", "--device gpu", "[gpu]", "dashboard"):
        assert needle in text, f"tutorial does not mention {needle!r}"


def test_tutorial_runs(tmp_path, monkeypatch):
    blocks = [(step, lang, code) for step, lang, code in _blocks(TUTORIAL.read_text()) if lang in RUNNABLE]
    assert blocks, "no runnable blocks in docs/tutorial.md"
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    # The project may be installed editable or not at all: make `graph`, `pipeline`, ... importable.
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO))
    namespace: dict = {"__name__": "__tutorial__"}
    start = time.perf_counter()
    for index, (step, lang, code) in enumerate(blocks):
        where = f"docs/tutorial.md block {index} (step {step}, {lang}):\n{code}"
        if lang == "bash":
            result = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env,
                capture_output=True, text=True, timeout=120,
            )
            assert result.returncode == 0, (
                f"{where}\nexit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\n"
                f"stderr:\n{result.stderr[-3000:]}"
            )
        else:
            try:
                exec(compile(code, f"<tutorial block {index}>", "exec"), namespace)  # noqa: S102
            except Exception as exc:  # report which block failed, then fail the test
                pytest.fail(f"{where}\nraised {type(exc).__name__}: {exc}")
    elapsed = time.perf_counter() - start
    # The tutorial promises to finish in under a minute; leave headroom for loaded CI machines.
    assert elapsed < 90, f"tutorial took {elapsed:.0f} s"
    # What the tutorial claims to have written.
    for path in ("tutorial/volume.zarr", "runs/tutorial/run.json", "runs/tutorial/labels.zarr/neurons",
                 "tutorial/report.html", "exports/neuprint/Neuprint_Neurons.csv",
                 "exports/precomputed/segmentation/info"):
        assert (tmp_path / path).exists(), f"tutorial did not write {path}"
