"""Every public class and function has an Examples section, and it runs.

The examples are collected from the public names of ``calm_np``,
``calm_np.evaluation``, ``calm_np.preprocessing``, ``calm_np.datasets`` and
``calm_np.plots`` (and the public methods of their classes) and run with
:mod:`doctest` on NumPy, each in its own temporary folder (some write
files), with the suite's warnings-as-errors in force.
"""

from __future__ import annotations

import doctest
import inspect

import pytest

import calm_np
from calm_np import datasets, evaluation, plots, preprocessing

pytest.importorskip("sklearn")  # load_digits_images, linear_probe
pytest.importorskip("matplotlib")  # calm_np.plots

MODULES = (calm_np, evaluation, preprocessing, datasets, plots)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def public_objects():
    """``(qualified name, object)`` of each public class and function, once."""
    seen, out = set(), []
    for module in MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue  # constants and __version__
            if id(obj) in seen:  # datasets re-exports two preprocessing names
                continue
            seen.add(id(obj))
            out.append((f"{module.__name__}.{name}", obj))
    return out


def doctests():
    finder = doctest.DocTestFinder(exclude_empty=True)
    out = []
    for qualname, obj in public_objects():
        for test in finder.find(obj, qualname, globs={}):
            if test.examples and test.name.startswith(qualname):
                out.append(test)
    return sorted(out, key=lambda t: t.name)


DOCTESTS = doctests()


@pytest.mark.parametrize("qualname", [name for name, _ in public_objects()])
def test_docstring_has_examples(qualname):
    obj = dict(public_objects())[qualname]
    doc = inspect.getdoc(obj) or ""
    assert "Examples\n--------" in doc, f"{qualname} has no Examples section"
    assert ">>>" in doc


@pytest.mark.numpy
@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_examples_run(test, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    out = []
    result = runner.run(test, out=out.append, clear_globs=True)
    assert result.failed == 0, "".join(out)
