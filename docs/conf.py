"""Sphinx configuration of the nas3d_fast documentation (issue 25).

Build: ``python -m sphinx -W --keep-going -b html docs build/docs`` (``make docs``). Warnings are errors:
a broken internal link, a missing reference, a public symbol without a docstring (``_ext/nas3d_api.py``)
or a tutorial that raises all fail the build. The tutorials in ``examples/`` run during the build on tiny
data (sphinx-gallery) and land, with their output and figures, in ``tutorials/`` (generated, not in git).
"""

from __future__ import annotations

import os
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "_ext"))
sys.path.insert(0, ROOT)

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TRITON_INTERPRET", "1")  # as the tests: Triton kernels, if ever reached, on the CPU
# The tutorials and the autodoc imports must not print the "_C missing" warning as a build warning.
warnings.filterwarnings("ignore", message=".*nas3d_fast._C.*")

import nas3d_fast  # noqa: E402

project = "nas3d_fast"
author = "the nas3d_fast authors"
copyright = "2026, the nas3d_fast authors"
release = version = nas3d_fast.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "nas3d_api",
    "nas3d_bench",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "examples/README.rst", "tutorials/*.ipynb", "tutorials/*.py", "**/*.zip"]

# Missing references are errors, for everything the package documents itself. Names of other projects
# (torch, numpy, the standard library) have no inventory here (the build runs offline) and are ignored.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|numpy|np|nn|nibabel|matplotlib|collections|typing|abc|argparse|pathlib|os|io"
               r"|dataclasses)(\..*)?"),
    (r"py:.*", r"(Tensor|Module|Generator|ndarray|Sequence|Mapping|Iterator|Iterable|Callable|Any|ClassVar|Path"
               r"|optional)"),
    (r"py:.*", r"(int|float|str|bool|bytes|dict|list|tuple|set|type|object|None|callable|Ellipsis)"),
    (r"py:.*", r"[A-Za-z_]*(Error|Exception|Warning)"),
    (r"py:class", r"['\"].*|[A-Za-z_.]*\[.*"),  # string and generic annotations (tuple[int, ...])
    (r"py:.*", r".*\._[A-Za-z].*"),  # private names in signatures (the package's own underscore helpers)
    # internal helpers that public docstrings mention, deliberately outside the API reference
    (r"py:.*", r"(nas3d_fast\.profile\.trace\.LifetimeTracker|nas3d_fast\.search\.distributed\.ProcessGroup"
     r"|nas3d_fast\.spaces\.dints_net\.(Layout|Stems))"),
    (r"py:.*", r"(check_intensity|AFFINE_TOLERANCE|nas3d_fast\.data\.sampler\.is_foreground_draw)"),
]

autodoc_default_options = {"members": True, "show-inheritance": True, "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autosummary_generate = False
# The package's docstrings are Google style ("Args:", "Returns:") with types written as prose
# ("(N, C, X, Y, Z) float tensor"), so types are shown as text, not turned into cross-references.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_param = False
napoleon_use_rtype = False
napoleon_use_ivar = True
napoleon_preprocess_types = False


def _attribute_docstring_as_written(self) -> list[str]:
    """Napoleon reads an attribute's doc comment "#: minutes: stop after..." as "type: description";
    the package's ``#:`` comments are prose, so they are kept as written."""
    lines = []
    while self._lines:
        lines.append(self._lines.popleft())
    return lines


from sphinx.ext.napoleon.docstring import GoogleDocstring  # noqa: E402

GoogleDocstring._parse_attribute_docstring = _attribute_docstring_as_written
add_module_names = False

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"nas3d_fast {release}"

sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "tutorials",
    "filename_pattern": r"tutorial_",  # every tutorial runs during the build
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": False,  # run them all, then fail (every failure is reported)
    "only_warn_on_example_error": False,
    "download_all_examples": False,
    "remove_config_comments": True,
    "min_reported_time": 0,
    "show_memory": False,
    "write_computation_times": False,  # its page loads scripts from CDNs; each tutorial page gives its time
    "reset_modules": ("matplotlib",),
    "matplotlib_animations": False,
    "capture_repr": ("_repr_html_", "__repr__"),
}
