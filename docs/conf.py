"""Sphinx configuration of the stmcdi documentation.

Build locally (offline: no intersphinx, external references are not checked)::

    python -m sphinx -W -b html docs docs/_build/html

Set ``STMCDI_DOCS_INTERSPHINX=1`` (as Read the Docs does) to link to the external projects' docs; that needs
network access to download their ``objects.inv`` inventories.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import warnings
from datetime import date
from importlib.metadata import metadata
from pathlib import Path

HERE = Path(__file__).parent

# sphinx-autodoc-typehints 3.6 calls an API that Sphinx 9 deprecates; the Python warning is noise in build logs.
warnings.filterwarnings("ignore", message=r".*set_application.*is deprecated", module="sphinx_autodoc_typehints")

# -- Project information -----------------------------------------------------------------------------------

_meta = metadata("stmcdi")
project = "stmcdi"
author = "stmcdi developers"
copyright = f"{date.today().year}, {author}"
release = _meta["Version"]
version = release

# -- General configuration -----------------------------------------------------------------------------------

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx_autodoc_typehints",  # after napoleon
    "sphinx_copybutton",
    "sphinxcontrib.bibtex",
]

templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "generated/cli.txt",
    "Thumbs.db",
    ".DS_Store",
    "**.ipynb_checkpoints",
    "tutorials/README.md",  # docs/tutorials -> ../tutorials; the README is for GitHub readers
]
master_doc = "index"
default_role = "literal"
nitpicky = True

# MyST / MyST-NB: tutorials are committed with their outputs and never executed by the docs build.
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "amsmath", "html_image", "html_admonition"]
myst_heading_anchors = 3
nb_execution_mode = "off"
nb_merge_streams = True

# autodoc / autosummary
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}  # the autosummary templates choose the members
autoclass_content = "class"  # ``__init__`` has no docstring of its own; parameters live in the class docstring


def _class_members() -> dict[str, list[str]]:
    """Members to document on each public class page (used by ``_templates/autosummary/class.rst``).

    A class page lists what the class itself defines (its ``__dict__`` and its own annotations), not what it
    inherits from scvi-tools, torch or Lightning: those would add hundreds of references to their internals.
    A few inherited methods are worth showing anyway (``_INHERITED``). Dataclass fields that the class docstring
    already describes in an ``Attributes`` section are left out, so they are not documented twice.
    """
    import dataclasses
    import importlib

    members: dict[str, list[str]] = {}
    for modname in ("stmcdi", "stmcdi.pp", "stmcdi.pl", "stmcdi.datasets", "stmcdi.benchmark", "stmcdi.nn"):
        module = importlib.import_module(modname)
        for name in module.__all__:
            cls = getattr(module, name)
            if not isinstance(cls, type):
                continue
            own = set(vars(cls)) | set(vars(cls).get("__annotations__", {}))
            if dataclasses.is_dataclass(cls) and re.search(r"^\s*Attributes\n\s*-+$", cls.__doc__ or "", re.M):
                own -= {f.name for f in dataclasses.fields(cls)}
            fullname = f"{modname}.{name}"
            members[fullname] = sorted(n for n in own | set(_INHERITED.get(fullname, ())) if not n.startswith("_"))
    return members


#: Inherited members worth a place on the class page.
_INHERITED = {"stmcdi.STMCDI": ("save", "load")}
autosummary_context = {"class_members": _class_members()}

# napoleon: numpy style only
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_include_init_with_doc = False
napoleon_use_rtype = True
napoleon_use_param = True
napoleon_use_ivar = True  # ``Attributes`` sections as fields (dataclasses would otherwise be documented twice)
napoleon_custom_sections = ["Shapes"]  # tensor shapes of the torch modules in ``stmcdi.nn``

# sphinx-autodoc-typehints
typehints_defaults = "braces"
always_document_param_types = False
typehints_document_rtype = True
typehints_use_signature = False
typehints_use_signature_return = False

# sphinxcontrib-bibtex
bibtex_bibfiles = ["references.bib"]
bibtex_reference_style = "author_year"
bibtex_default_style = "plain"

# sphinx-copybutton: strip prompts
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True

# -- Intersphinx (online builds only) -------------------------------------------------------------------------

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable/", None),
    "scipy": ("https://docs.scipy.org/doc/scipy/", None),
    "pandas": ("https://pandas.pydata.org/pandas-docs/stable/", None),
    "matplotlib": ("https://matplotlib.org/stable/", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", None),
    "squidpy": ("https://squidpy.readthedocs.io/en/stable/", None),
    "scvi-tools": ("https://docs.scvi-tools.org/en/stable/", None),
    "torch": ("https://docs.pytorch.org/docs/stable/", None),
    "lightning": ("https://lightning.ai/docs/pytorch/stable/", None),
    "torch_geometric": ("https://pytorch-geometric.readthedocs.io/en/latest/", None),
}
intersphinx_timeout = 10

#: Fetch the intersphinx inventories only when asked to (Read the Docs sets this). Without network the
#: fetches fail with warnings, which ``-W`` turns into errors.
#: Unset on Read the Docs (``READTHEDOCS=True``) it defaults to on, so a build without the override in
#: .readthedocs.yaml still links out.
_flag = os.environ.get("STMCDI_DOCS_INTERSPHINX", "1" if os.environ.get("READTHEDOCS") == "True" else "0")
INTERSPHINX = _flag.strip().lower() in {"1", "true", "yes", "on"}
if not INTERSPHINX:
    intersphinx_mapping = {}
    intersphinx_disabled_reftypes = ["*"]

# Names that live outside this package. Offline they cannot be resolved, so nitpicky mode must not report
# them; online (intersphinx) they are checked like everything else.
_EXTERNAL_MODULES = (
    # standard library and builtins
    "argparse",
    "collections",
    "os",
    "pathlib",
    "typing",
    "types",
    "builtins",
    "numbers",
    "io",
    "logging",
    # scientific Python / scverse / deep learning
    "np",
    "numpy",
    "scipy",
    "pd",
    "pandas",
    "matplotlib",
    "sklearn",
    "anndata",
    "scanpy",
    "squidpy",
    "scvi",
    "torch",
    "lightning",
    "torch_geometric",
    "mudata",  # in the signature of the inherited scvi-tools ``STMCDI.save``
)
_BUILTIN_NAMES = (
    "None",
    "Ellipsis",  # ``tuple[str, ...]``
    "True",
    "False",
    "int",
    "float",
    "complex",
    "str",
    "bytes",
    "bool",
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "object",
    "type",
    "slice",
    "callable",
    "Callable",
    "Literal",
    "Sequence",
    "Mapping",
    "Iterable",
    "Iterator",
    "Any",
    "Path",
    "PathLike",
    "AnnData",
    "Tensor",
    "ndarray",
    "DataFrame",
    "Series",
    "Figure",
    "Axes",
    "ArgumentParser",
    "Generator",
    "BinaryIO",
    "TextIO",
    "IO",
)
nitpick_ignore_regex: list[tuple[str, str]] = []
if not INTERSPHINX:
    nitpick_ignore_regex += [
        (r"py:.*", rf"(?:{'|'.join(map(re.escape, _EXTERNAL_MODULES))})(?:\..+)?"),
        (r"py:.*", rf"(?:{'|'.join(map(re.escape, _BUILTIN_NAMES))})"),
    ]

# -- HTML output ------------------------------------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = "stmcdi"
html_static_path = ["_static"]
html_theme_options = {"navigation_with_keys": False}
html_show_sphinx = False

# -- Command-line reference ---------------------------------------------------------------------------------------


def _write_cli_help(path: Path) -> None:
    """Write the ``--help`` text of ``stmcdi`` and of each subcommand to ``path`` (included by api.md)."""
    from stmcdi._cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width; keep the docs reproducible
    os.environ["NO_COLOR"] = "1"  # Python >= 3.14 may colour help text
    parser = build_parser()
    parser.formatter_class = argparse.HelpFormatter
    blocks = [f"$ stmcdi --help\n{parser.format_help()}"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                blocks.append(f"$ stmcdi {name} --help\n{sub.format_help()}")
    text = "\n\n".join(b.rstrip() for b in blocks) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:  # avoid needless rebuilds
        path.write_text(text)


_write_cli_help(HERE / "generated" / "cli.txt")

# -- Docstring tweaks ------------------------------------------------------------------------------------------------

_SECTION_RE = re.compile(r"^(\s*)Returns\s*$")


def _is_header(lines: list[str], i: int) -> bool:
    return (
        i + 1 < len(lines)
        and bool(lines[i].strip())
        and set(lines[i + 1].strip()) == {"-"}
        and len(lines[i + 1].strip()) >= len(lines[i].strip())
    )


def _free_text_returns(app, what, name, obj, options, lines: list[str]) -> None:
    """Render scanpy-style free-text ``Returns`` sections as prose.

    The package's docstrings describe the return value in words (the type comes from the annotation), e.g.
    ``Returns / ------- / The exit status.``. Napoleon's numpy parser reads each unindented line of such a
    section as a *type* (``:rtype: The exit status.``), which renders badly and makes nitpicky mode look up
    "The exit status." as a class. When no unindented line of the section has the numpy ``name : type``
    form, the text is indented under a bare ``:`` line, which napoleon reads as one field with neither
    name nor type: ``:returns: The exit status.``; sphinx-autodoc-typehints then adds the return type.
    """
    i = 0
    while i < len(lines):
        m = _SECTION_RE.match(lines[i])
        if not (m and _is_header(lines, i)):
            i += 1
            continue
        indent = m.group(1)
        start = end = i + 2
        while end < len(lines) and not (_is_header(lines, end) and not lines[end][len(indent) :].startswith(" ")):
            end += 1
        body = lines[start:end]
        top = [ln[len(indent) :] for ln in body if ln.strip() and not ln[len(indent) :].startswith((" ", "\t"))]
        if top and not any(re.search(r"\S\s+:(\s|$)", ln) or ln.rstrip().endswith(" :") for ln in top):
            while body and not body[-1].strip():
                body.pop()
            new = [f"{indent}:"] + [f"{indent}    {ln[len(indent) :]}" if ln.strip() else "" for ln in body] + [""]
            lines[start:end] = new
            end = start + len(new)
        i = end


def _reexported_data_doc(app, what, name, obj, options, lines: list[str]) -> None:
    """Give re-exported module-level data their ``#:`` doc-comment.

    ``stmcdi.benchmark.BASELINES`` is defined (and documented with a ``#:`` comment) in a private submodule
    and re-exported; autodoc only looks for the comment in ``stmcdi.benchmark`` and otherwise shows the
    docstring of the value's *type* (``dict``, ``str``, ...). Look the comment up in the submodules that hold
    the same object, and drop the type's docstring when there is none.
    """
    if what != "data":
        return
    from sphinx.pycode import ModuleAnalyzer

    modname, _, attr = name.rpartition(".")
    for subname in sorted(sys.modules):
        sub = sys.modules[subname]
        if not subname.startswith(modname + ".") or getattr(sub, attr, None) is not obj:
            continue
        try:
            docs = ModuleAnalyzer.for_module(subname).find_attr_docs()
        except Exception:  # noqa: BLE001 - no source (compiled module, ...)
            continue
        if ("", attr) in docs:
            lines[:] = list(docs[("", attr)])
            return
    type_doc = inspect.cleandoc(type(obj).__doc__ or "")
    if type_doc and "\n".join(lines).strip() == type_doc.strip():
        lines[:] = []


def setup(app):
    """Connect the docstring tweaks (before napoleon, which runs at the default priority 500)."""
    app.connect("autodoc-process-docstring", _free_text_returns, priority=400)
    app.connect("autodoc-process-docstring", _reexported_data_doc, priority=300)
