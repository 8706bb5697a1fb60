"""The README's Python snippets and the shipped examples run with ``-W error``.

Every ``python`` block of the README runs, in order, as one script (a
later block may use the names of an earlier one), in a fresh interpreter
where any warning is an error; the examples run the same way on tiny files.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(text):
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def run_strict(script, cwd, timeout=300):
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_readme_has_the_snippets():
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 1  # the front door's "Ten lines"
    assert any("ConvolutionalMixture(n_kernels=16" in b for b in blocks)


@pytest.mark.slow
def test_readme_snippets_run_without_a_warning(tmp_path):
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert blocks, "README.md has no python block"
    script = "\n".join(blocks)
    done = run_strict(script, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Warning" not in done.stderr, done.stderr[-3000:]


# each example with tiny arguments, in a fresh interpreter, -W error
EXAMPLE_RUNS = {
    "quickstart": [],
    "mnist": ["--data-dir", "{mnist}", "--epochs", "2", "--n-kernels", "4",
              "--kernel-size", "8", "--batch-size", "16", "--out", "o"],
    "stl10": ["--data-dir", "{stl10}", "--epochs", "2", "--n-kernels", "2",
              "--kernel-size", "15", "--batch-size", "5", "--pooling", "2",
              "--seed", "1",  # seeds 0, 2, 3 starve a kernel on 20 tiny images
              "--out", "o"],
    "network_fashion_mnist": ["--data-dir", "{mnist}", "--limit", "20",
                              "--test-limit", "10", "--n-kernels", "4", "5",
                              "--epochs", "2", "--batch-size", "8", "--out", "o"],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXAMPLE_RUNS))
def test_example_runs_without_a_warning(tmp_path, name):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    sys.path.insert(0, str(ROOT / "tests"))
    from _datafiles import write_mnist, write_stl10

    folders = dict(
        mnist=str(write_mnist(tmp_path / "mnist", n_train=40, n_test=20) and "mnist"),
        stl10=str(write_stl10(tmp_path / "stl10_binary", n_train=12, n_test=8)),
    )
    args = [a.format(**folders) for a in EXAMPLE_RUNS[name]]
    script = (
        "import runpy, sys\n"
        f"sys.argv = {[name, *args]!r}\n"
        f"runpy.run_path({str(ROOT / 'examples' / (name + '.py'))!r}, "
        "run_name='__main__')\n"
    )
    done = run_strict(script, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Warning" not in done.stderr, done.stderr[-3000:]
