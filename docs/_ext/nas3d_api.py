"""The API reference of nas3d_fast, generated from the public modules' ``__all__`` (issue 25).

When the build starts, one page per public module is written to ``docs/api/`` (``nas3d_fast.ops.rst``
...; generated, not in git): the module's docstring, a summary table, then every public name through
autodoc. A public name without a docstring (for data: without a ``#:`` comment where it is defined) is a
build warning, so the ``-W`` build fails on it: a new public symbol is documented or the build says so.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re

from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: the public modules, in the order the reference lists them, with one line on each.
MODULES = {
    "nas3d_fast": "backends and their choice",
    "nas3d_fast.ops": "the fast ops (reference, cpu, cuda and triton backends)",
    "nas3d_fast.nn": "modules on the ops: the supernet edge, axial attention; export and ONNX",
    "nas3d_fast.spaces": "search spaces behind one interface",
    "nas3d_fast.search": "supernet searchers and the search loop",
    "nas3d_fast.search.trials": "trial searchers (random, evolution, relation predictor), the trial store, executors",
    "nas3d_fast.profile": "training-step memory, measured and predicted",
    "nas3d_fast.data": "MSD-format NIfTI datasets, preprocessing, patches, augmentation",
    "nas3d_fast.train": "losses, metrics, optimisers, the trainer and its checkpoints",
    "nas3d_fast.inference": "sliding-window inference and NIfTI in and out",
}


#: names that public signatures and docstrings use but that live outside the modules' ``__all__``: they
#: are documented on the page of the module given, under their full path.
EXTRAS = {
    "nas3d_fast.nn": ["nas3d_fast.nn.candidates.Candidate"],
    "nas3d_fast.spaces": ["nas3d_fast.spaces.base.NoSupernetError", "nas3d_fast.spaces.dints_net.DintsNet",
                          "nas3d_fast.spaces.dints_net.DintsSupernet"],
    "nas3d_fast.train": ["nas3d_fast.train.run.DataSettings", "nas3d_fast.train.run.train",
                         "nas3d_fast.train.trainer.ValResult"],
}

#: the search spaces: each module's docstring (the paper's choices, the encoding) on the spaces page.
SPACE_MODULES = ["nas3d_fast.spaces.dints", "nas3d_fast.spaces.scnas", "nas3d_fast.spaces.c2fnas",
                 "nas3d_fast.spaces.tautoml", "nas3d_fast.spaces.ronasmis"]


def _kind(obj) -> str:
    if inspect.ismodule(obj):
        return "module"
    if inspect.isclass(obj):
        return "exception" if issubclass(obj, BaseException) else "class"
    if callable(obj):
        return "function"
    return "data"


def _data_comment(package, name: str, obj) -> tuple[str, list[str]] | None:
    """(defining module, ``#:`` comment lines) of a public data name: the first module of ``package``
    (itself, then its submodules) that holds the same object under ``name`` with a doc comment."""
    names = [package.__name__]
    if hasattr(package, "__path__"):
        names += [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
    for mod_name in names:
        try:
            mod = importlib.import_module(mod_name)
        except Exception:  # noqa: BLE001 - an optional submodule that does not import is not ours to judge
            continue
        if getattr(mod, name, None) is not obj:
            continue
        try:
            analyzer = ModuleAnalyzer.for_module(mod_name)
            analyzer.analyze()
        except Exception:  # noqa: BLE001
            continue
        doc = analyzer.attr_docs.get(("", name))
        if doc and "".join(doc).strip():
            return mod_name, [line for line in doc if line.strip() or line == ""]
    return None


def _own_doc(obj) -> str:
    doc = obj.__doc__ if not isinstance(obj, type) else obj.__dict__.get("__doc__")
    return (doc or "").strip()


def module_page(mod_name: str) -> tuple[str, list[str]]:
    """The reST page of ``mod_name`` and the public names that lack a docstring."""
    mod = importlib.import_module(mod_name)
    public = list(getattr(mod, "__all__", []))
    undocumented = []
    if not _own_doc(mod):
        undocumented.append(mod_name)
    lines = [mod_name, "=" * len(mod_name), "", f".. automodule:: {mod_name}", "   :no-members:", "",
             f".. currentmodule:: {mod_name}", ""]
    groups: dict[str, list[str]] = {"module": [], "function": [], "class": [], "exception": [], "data": []}
    for name in public:
        groups[_kind(getattr(mod, name))].append(name)
    listed = [n for k in ("function", "class", "exception") for n in groups[k]]
    if listed:
        lines += [".. autosummary::", "   :nosignatures:", ""] + [f"   {n}" for n in listed] + [""]
    titles = {"function": "Functions", "class": "Classes", "exception": "Exceptions", "data": "Constants",
              "module": "Modules"}
    for kind in ("function", "class", "exception", "data", "module"):
        if not groups[kind]:
            continue
        lines += [titles[kind], "-" * len(titles[kind]), ""]
        for name in groups[kind]:
            obj = getattr(mod, name)
            if kind == "data":
                found = _data_comment(mod, name, obj)
                if found is None:
                    undocumented.append(f"{mod_name}.{name}")
                    continue
                where, doc = found
                lines += [f".. py:data:: {name}", ""]
                lines += [f"   {line}" if line else "" for line in doc]
                lines += ["", f"   Value: ``{obj!r}``" if len(repr(obj)) < 300 else f"   Defined in ``{where}``.", ""]
                continue
            if not _own_doc(obj):
                undocumented.append(f"{mod_name}.{name}")
            if kind == "module" and obj.__name__ in MODULES:
                lines += [f"- :doc:`{obj.__name__}`", ""]
                continue
            if kind == "function":
                lines += [f".. autofunction:: {name}", ""]
            elif kind == "module":
                lines += [f".. automodule:: {obj.__name__}", "   :members:", "   :no-index:" if False else "", ""]
            else:
                lines += [f".. autoclass:: {name}", "   :members:", "   :undoc-members:", "   :show-inheritance:", ""]
    if mod_name in EXTRAS:
        lines += ["Also used", "---------", "",
                  "Names the public functions take or return, documented where they are defined.", ""]
        for full in EXTRAS[mod_name]:
            owner, _, name = full.rpartition(".")
            obj = getattr(importlib.import_module(owner), name)
            if not _own_doc(obj):
                undocumented.append(full)
            directive = "autofunction" if _kind(obj) == "function" else "autoclass"
            lines += [f".. {directive}:: {full}"] + (["   :members:"] if directive == "autoclass" else []) + [""]
    if mod_name == "nas3d_fast.spaces":
        lines += ["The spaces", "----------", "", "``get(name, **options)`` constructs one of these; each module's "
                  "docstring gives the paper's choices and the encoding.", ""]
        for space_mod in SPACE_MODULES:
            title = f"``{space_mod.rpartition('.')[2]}``"
            lines += [title, "~" * len(title), "", f".. automodule:: {space_mod}", "   :members:",
                      "   :exclude-members: " + ", ".join(_imported_names(space_mod)), ""]
    return "\n".join(lines) + "\n", undocumented


def _imported_names(mod_name: str) -> list[str]:
    """Names a module imports from elsewhere (documented where they are defined); at least one, as
    ``:exclude-members:`` needs a value."""
    mod = importlib.import_module(mod_name)
    names = [n for n, v in vars(mod).items()
             if getattr(v, "__module__", mod_name) != mod_name and not n.startswith("_")]
    return names or ["__nothing__"]


def index_page() -> str:
    lines = ["API reference", "=============", "",
             "Generated from the docstrings of every public module: each page lists the names in the "
             "module's ``__all__``.", "", ".. list-table::", "   :header-rows: 0", ""]
    for mod_name, what in MODULES.items():
        lines += [f"   * - :doc:`{mod_name}`", f"     - {what}"]
    lines += ["", ".. toctree::", "   :hidden:", ""] + [f"   {m}" for m in MODULES]
    return "\n".join(lines) + "\n"


def _write(path: str, text: str) -> None:
    """Write only when the text changed, so incremental builds do not reread every page."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def generate(app) -> None:
    out = os.path.join(app.srcdir, "api")
    os.makedirs(out, exist_ok=True)
    _write(os.path.join(out, "index.rst"), index_page())
    for mod_name in MODULES:
        text, undocumented = module_page(mod_name)
        _write(os.path.join(out, f"{mod_name}.rst"), text)
        for name in undocumented:
            logger.warning("public symbol %s has no docstring (data: no #: comment where it is defined)", name,
                           type="nas3d", subtype="undocumented")


# -- the package's plain-text docstring conventions, rendered as reST ---------------------------------

_SHAPE_STAR = re.compile(r"(?<=[(\[])\*(?=[A-Za-z_])|(?<=[(\[,] )\*(?=[A-Za-z_])")  # (C, *size), (*roi)
_LITERAL = re.compile(r"(``.*?``|`[^`]*`_?)")


def _escape_prose(line: str) -> str:
    """Escape what the package's docstrings mean as plain text: ``|x|`` (an absolute value or a set's
    size, never a substitution) and the unpacking star of shapes, ``(B, C, *spatial)``. Literals are
    left alone."""
    parts = _LITERAL.split(line)
    for i in range(0, len(parts), 2):
        parts[i] = _SHAPE_STAR.sub(r"\\*", parts[i].replace("|", "\\|"))
    return "".join(parts)


def _pipe_table(rows: list[str], indent: str) -> list[str]:
    """A Markdown pipe table (header, ``| --- |`` rule, rows) as a reST list-table."""
    cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
    header, body = cells[0], cells[2:]
    out = [f"{indent}.. list-table::", f"{indent}   :header-rows: 1", ""]
    for row in [header, *body]:
        for j, cell in enumerate(row):
            out.append(f"{indent}   {'* -' if j == 0 else '  -'} {_escape_prose(cell) or ' '}")
    return out + [""]


def render_docstring(lines: list[str]) -> list[str]:
    """The docstring lines with the package's conventions turned into reST (see ``_escape_prose``;
    Markdown pipe tables become list-tables); literal blocks (after ``::``) and doctests are kept."""
    out: list[str] = []
    i, literal_indent = 0, None
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        if literal_indent is not None:
            if line.strip() and indent <= literal_indent:
                literal_indent = None
            else:
                out.append(line)
                i += 1
                continue
        stripped = line.strip()
        if stripped.startswith("|") and i + 1 < len(lines) and re.match(r"^\s*\|\s*:?-{3,}", lines[i + 1]):
            j = i
            while j < len(lines) and lines[j].strip().startswith("|"):
                j += 1
            if out and out[-1].strip():
                out.append("")
            out += _pipe_table(lines[i:j], line[:indent])
            i = j
            continue
        bullet = re.match(r"^[-*] ", stripped) is not None
        if bullet and out and out[-1].strip():
            prev = out[-1]
            prev_indent = len(prev) - len(prev.lstrip())
            if not (re.match(r"^[-*] ", prev.strip()) and prev_indent == indent):
                out.append("")
        if stripped.startswith(">>>"):
            out.append(line)
        else:
            out.append(_escape_prose(line))
        if stripped.endswith("::") and not stripped.startswith(".."):
            literal_indent = indent
        i += 1
    return out


def process_docstring(app, what, name, obj, options, lines):
    if name.startswith("nas3d_fast"):
        lines[:] = render_docstring(lines)


# -- references to a public name through the module that defines it -------------------------------


def _public_paths() -> dict[str, str]:
    """{defining path: public path} of every public class and function (``nas3d_fast.data.preprocess.
    restore_labels`` -> ``nas3d_fast.data.restore_labels``): docstrings and signatures name either."""
    paths = {}
    for mod_name in MODULES:
        mod = importlib.import_module(mod_name)
        for name in getattr(mod, "__all__", []):
            obj = getattr(mod, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                paths.setdefault(f"{obj.__module__}.{obj.__qualname__}", f"{mod_name}.{name}")
    return paths


_PATHS: dict[str, str] = {}


def resolve_defining_path(app, env, node, contnode):
    """A reference that names a public class or function (or its member) by the module defining it
    resolves to the public name's documentation."""
    if node.get("refdomain") != "py":
        return None
    if not _PATHS:
        _PATHS.update(_public_paths())
    head, rest = node.get("reftarget", ""), ""
    while head:
        if head in _PATHS:
            return env.domains["py"].resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                                                  _PATHS[head] + rest, node, contnode)
        head, _, last = head.rpartition(".")
        rest = f".{last}{rest}"
    return _through_bases(app, env, node, contnode)


def _through_bases(app, env, node, contnode):
    """``:meth:`name``` in a class's docstring that names a method the class inherits from a
    documented base."""
    target, module, cls = node.get("reftarget", ""), node.get("py:module"), node.get("py:class")
    if "." in target or not module or not cls:
        return None
    try:
        obj = importlib.import_module(module)
        for part in cls.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    if not _PATHS:
        _PATHS.update(_public_paths())
    for base in getattr(obj, "__mro__", ())[1:]:
        public = _PATHS.get(f"{base.__module__}.{base.__qualname__}")
        if public and target in vars(base):
            return env.domains["py"].resolve_xref(env, node["refdoc"], app.builder, node["reftype"],
                                                  f"{public}.{target}", node, contnode)
    return None


def setup(app):
    app.connect("builder-inited", generate)
    app.connect("autodoc-process-docstring", process_docstring)
    app.connect("missing-reference", resolve_defining_path)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
