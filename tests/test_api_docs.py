"""Every public object has a numpy-style docstring with the required sections, and every example runs.

Public objects: ``__all__`` of ``stmcdi``, ``stmcdi.pp``, ``stmcdi.pl``, ``stmcdi.benchmark`` and
``stmcdi.datasets`` (submodules and module-level data left out), plus the public methods and properties a
class defines itself (its ``__dict__``).
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import io
import logging
import pkgutil
import re
from pathlib import Path

import pytest

import stmcdi

PUBLIC_MODULES = ("stmcdi", "stmcdi.pp", "stmcdi.pl", "stmcdi.benchmark", "stmcdi.datasets")
API_MD = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _public_objects() -> list[tuple[str, str, object]]:
    """``(qualified name, kind, object)`` with kind ``"class"``, ``"function"``, ``"method"`` or ``"property"``."""
    out = []
    for modname in PUBLIC_MODULES:
        module = importlib.import_module(modname)
        for name in module.__all__:
            obj = getattr(module, name)
            qualname = f"{modname}.{name}"
            if inspect.isclass(obj):
                out.append((qualname, "class", obj))
                own = {}
                for klass in reversed([k for k in obj.__mro__ if k.__module__.startswith("stmcdi")]):
                    own.update(vars(klass))  # the class's own members and those of stmcdi mixins it uses
                for attr, value in own.items():
                    if attr.startswith("_"):
                        continue
                    if isinstance(value, property):
                        out.append((f"{qualname}.{attr}", "property", value))
                    elif isinstance(value, classmethod | staticmethod):
                        out.append((f"{qualname}.{attr}", "method", value.__func__))
                    elif inspect.isfunction(value):
                        out.append((f"{qualname}.{attr}", "method", value))
            elif callable(obj) and not inspect.ismodule(obj):
                out.append((qualname, "function", obj))
            # else: a submodule or module-level data (BASELINES, PROTOCOLS, DATA_DIR_ENV)
    return out


PUBLIC = _public_objects()


def _sections(doc: str) -> set[str]:
    """Numpy section headings: a line followed by a dashed underline at least as long."""
    lines = doc.splitlines()
    return {
        a.strip()
        for a, b in zip(lines, lines[1:], strict=False)
        if a.strip() and set(b.strip()) == {"-"} and len(b.strip()) >= len(a.strip())
    }


def _takes_arguments(func) -> bool:
    """Whether ``func`` takes arguments besides ``self`` / ``cls``."""
    params = list(inspect.signature(inspect.unwrap(func)).parameters)
    if params and params[0] in ("self", "cls"):
        params = params[1:]
    return bool(params)


def _required_sections(kind: str, obj) -> set[str]:
    if kind == "property":
        return {"Returns", "Examples"}
    if kind == "class":
        doc = inspect.getdoc(obj) or ""
        # a dataclass-like record that documents its fields as ``Attributes`` (``benchmark.HeldOut``)
        if "Attributes" in _sections(doc):
            return {"Examples"}
        init = obj.__dict__.get("__init__")
        if init is None:  # inherited constructor: the class's own signature
            try:
                takes = bool(inspect.signature(obj).parameters)
            except (TypeError, ValueError):
                takes = False
        else:
            takes = _takes_arguments(init)
        return {"Parameters", "Examples"} if takes else {"Examples"}
    required = {"Returns", "Examples"}
    if _takes_arguments(obj):
        required.add("Parameters")
    return required


def test_public_objects_are_collected():
    names = {name for name, _, _ in PUBLIC}
    assert {
        "stmcdi.STMCDI",
        "stmcdi.STMCDI.impute",
        "stmcdi.STMCDIModule.sample",
        "stmcdi.DiffusionTrainingPlan.configure_optimizers",
        "stmcdi.benchmark.HeldOut.n_scored",
        "stmcdi.datasets.cache_dir",
        "stmcdi.pp.spatial_graph",
        "stmcdi.pl.imputation",
    } <= names
    assert not names & {"stmcdi.benchmark.BASELINES", "stmcdi.benchmark.PROTOCOLS", "stmcdi.datasets.DATA_DIR_ENV"}


@pytest.mark.parametrize(("name", "kind", "obj"), PUBLIC, ids=[name for name, _, _ in PUBLIC])
def test_docstring_sections(name, kind, obj):
    doc = inspect.getdoc(obj.fget if kind == "property" else obj) or ""
    assert doc, f"{name} has no docstring"
    missing = _required_sections(kind, obj.fget if kind == "property" else obj) - _sections(doc)
    assert not missing, f"{name} ({kind}) lacks the numpy section(s) {sorted(missing)}"
    if "Examples" in _sections(doc):
        assert ">>>" in doc, f"{name}: the Examples section has no example"


def test_api_reference_lists_every_public_object():
    """``docs/api.md`` names every public function / class / data (methods appear on their class pages)."""
    text = API_MD.read_text()
    listed = set(re.findall(r"^\s{3}([\w.]+)\s*$", text, flags=re.M))
    expected = set()
    for modname in PUBLIC_MODULES:
        module = importlib.import_module(modname)
        prefix = modname.removeprefix("stmcdi").lstrip(".")
        for name in module.__all__:
            if not inspect.ismodule(getattr(module, name)):
                expected.add(f"{prefix}.{name}" if prefix else name)
    missing = sorted(expected - listed)
    assert not missing, f"docs/api.md does not list {missing}"


def _all_modules() -> list[str]:
    return ["stmcdi"] + sorted(m.name for m in pkgutil.walk_packages(stmcdi.__path__, "stmcdi."))


@pytest.fixture
def quiet_library_logs():
    """Silence the INFO messages scvi-tools and squidpy print to stdout (they would count as doctest output)."""
    import scvi  # noqa: F401 - sets up scvi's logger
    import squidpy  # noqa: F401 - sets up the spatialdata logger squidpy logs with

    loggers = [logging.getLogger(name) for name in ("scvi", "spatialdata._logging", "squidpy", "anndata")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    yield
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)


def test_doctests(quiet_library_logs):
    """Run the examples of every module of the package (those marked ``# doctest: +SKIP`` need data or a GPU)."""
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    failed = []
    n_examples = 0
    for modname in _all_modules():
        module = importlib.import_module(modname)
        for test in finder.find(module, modname):
            if not test.examples:
                continue
            n_examples += len(test.examples)
            result = runner.run(test, out=report.write, clear_globs=True)
            if result.failed:
                failed.append(test.name)
    assert n_examples > 100, f"only {n_examples} examples found"
    assert not failed, f"failing examples in {failed}:\n{report.getvalue()[-20000:]}"
