"""Sphinx directives of the tad_autograd docs.

``.. device-support-table::``
    Renders :data:`tad_autograd.compat.devices.TRANSFORM_SUPPORT` (which device types
    function transforms are trusted on, with the evidence), so the page can
    never drift from the table the resolver uses.

``.. operator-table::``
    Renders how each backend computes each operator, from the operators'
    descriptors' module (:data:`tad_autograd.backends._operators.HOW`), so a new
    operator has its row without editing the page.

``.. api-functions:: module [module ...]``
    An ``autofunction`` for each name in the modules' ``__all__`` (``:exclude:``
    leaves names out), so a new public function is in the reference without
    editing the page.

``.. benchmark-results::``
    Includes the benchmark report if it exists; ``:report: results-cuda``
    picks another report of the folder (default ``results``).

The benchmark suite (``benchmarks/``) writes ``docs/benchmarks/results.md``
and ``docs/benchmarks/results.png`` (``results-cuda.*`` with ``--device
cuda``); they are generated files and may be missing from a checkout.  This
directive

* parses the report as Markdown when ``myst_parser`` is installed, with
  relative image links rewritten so that they resolve from the including page;
  without ``myst_parser`` it shows the Markdown source verbatim;
* adds the plot (``results.png``) when the report does not already show it;
* renders a note instead of failing when the files are absent, so the docs
  build (with ``-W``) never depends on a benchmark run.

Named tuples (:class:`~tad_autograd.api.explain.Explanation`,
:class:`~tad_autograd.backends.Availability`) document their fields in an
``Attributes`` section.  numpydoc shows an attribute's own docstring instead
of that section's description whenever the attribute has one, and every
named-tuple field has the generated "Alias for field number N"; those
generated docstrings are removed before numpydoc reads the class.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from docutils.utils import new_document
from sphinx.util.docutils import SphinxDirective

_IMAGE_LINK = re.compile(r"(!\[[^\]]*\]\()(?!https?://|/)([^)\s]+)")
_HTML_IMG = re.compile(r"(<img\b[^>]*\bsrc=[\"'])(?!https?://|/)([^\"']+)")


class BenchmarkResults(SphinxDirective):
    has_content = False
    required_arguments = 0
    optional_arguments = 1  # the folder, relative to this page; default "benchmarks"
    option_spec = {"report": directives.unchanged}  # the file stem; default "results"

    def run(self) -> List[nodes.Node]:
        folder_rel = self.arguments[0] if self.arguments else "benchmarks"
        stem = self.options.get("report", "results")
        here = Path(self.env.doc2path(self.env.docname)).parent
        folder = here / folder_rel
        markdown = folder / f"{stem}.md"
        plot = folder / f"{stem}.png"
        for path in (markdown, plot):
            self.env.note_dependency(str(path))

        result: List[nodes.Node] = []
        text = markdown.read_text(encoding="utf-8") if markdown.is_file() else None
        shows_plot = False
        if text is None:
            result += self._rst(
                [
                    ".. note::",
                    "",
                    "   No benchmark results in this checkout yet:",
                    f"   ``docs/{folder_rel}/{stem}.md``",
                    "   is written by the benchmark suite in ``benchmarks/`` and included here",
                    "   when present.",
                ]
            )
        elif "myst_parser" in self.env.app.extensions:
            result += self._markdown(text, folder_rel, markdown)
            shows_plot = plot.name in text
        else:
            result += self._rst(
                [
                    f".. literalinclude:: {folder_rel}/{stem}.md",
                    "   :language: markdown",
                ]
            )
        if plot.is_file() and not shows_plot:
            result += self._rst(
                [
                    f".. figure:: {folder_rel}/{stem}.png",
                    "   :alt: benchmark results",
                    "   :width: 100%",
                ]
            )
        return result

    def _rst(self, lines: List[str]) -> List[nodes.Node]:
        return _parse(self, lines)

    def _markdown(self, text: str, folder_rel: str, path: Path) -> List[nodes.Node]:
        from myst_parser.parsers.sphinx_ import MystParser

        prefix = folder_rel.rstrip("/") + "/"
        text = _IMAGE_LINK.sub(lambda m: m.group(1) + prefix + m.group(2), text)
        text = _HTML_IMG.sub(lambda m: m.group(1) + prefix + m.group(2), text)
        document = new_document(str(path), self.state.document.settings)
        MystParser().parse(text, document)
        return list(document.children)


class DeviceSupportTable(SphinxDirective):
    has_content = False

    def run(self) -> List[nodes.Node]:
        from tad_autograd.compat.devices import TRANSFORM_SUPPORT

        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 15 20 65",
            "",
            "   * - device type",
            "     - automatic choice",
            "     - evidence",
        ]
        for device_type, (supported, evidence) in TRANSFORM_SUPPORT.items():
            choice = "best transform backend" if supported else "``autograd``"
            lines += [
                f"   * - ``{device_type}``",
                f"     - {choice}",
                f"     - {_escape(evidence)}",
            ]
        lines += [
            "   * - any other",
            "     - ``autograd``",
            "     - unknown: not in the table",
        ]
        return self._rst(lines)

    _rst = BenchmarkResults._rst


def _parse(directive: SphinxDirective, lines: List[str]) -> List[nodes.Node]:
    """The nodes of reStructuredText ``lines`` that ``directive`` writes into its page."""
    container = nodes.container()
    content = StringList(lines, source=directive.env.docname)
    directive.state.nested_parse(content, directive.content_offset, container)
    return list(container.children)


class OperatorTable(SphinxDirective):
    has_content = False

    def run(self) -> List[nodes.Node]:
        from tad_autograd.backends._operators import HOW

        header = (
            "operator",
            '``"func"`` (torch >= 2)',
            '``"functorch"`` 1.13',
            '``"functorch"`` on torch >= 2',
            '``"autograd"``',
        )
        lines = [".. list-table::", "   :header-rows: 1", "   :stub-columns: 1", ""]
        for row in (header, *((f"``{op.name}``", *how) for op, how in HOW.items())):
            lines += [f"   * - {row[0]}", *(f"     - {cell}" for cell in row[1:])]
        return _parse(self, lines)


class ApiFunctions(SphinxDirective):
    has_content = False
    required_arguments = 1
    optional_arguments = 10
    option_spec = {"exclude": directives.unchanged}

    def run(self) -> List[nodes.Node]:
        import importlib

        excluded = set(self.options.get("exclude", "").split())
        lines = [
            f".. autofunction:: tad_autograd.{name}"
            for module in self.arguments
            for name in importlib.import_module(module).__all__
            if name not in excluded
        ]
        return _parse(self, lines)


def _escape(text: str) -> str:
    """Make free text safe inside an RST table cell."""
    return text.replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`").replace("|", "\\|")


def _named_tuple_fields_as_written(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: List[str]
) -> None:
    """Drop the generated field docstrings of a named tuple (see the module docstring)."""
    if what != "class" or not isinstance(obj, type) or not issubclass(obj, tuple):
        return
    for field in getattr(obj, "_fields", ()):
        descriptor = obj.__dict__.get(field)
        if descriptor is not None and (descriptor.__doc__ or "").startswith("Alias for field"):
            descriptor.__doc__ = None


def setup(app: Any) -> Dict[str, Any]:
    app.add_directive("benchmark-results", BenchmarkResults)
    app.add_directive("device-support-table", DeviceSupportTable)
    app.add_directive("operator-table", OperatorTable)
    app.add_directive("api-functions", ApiFunctions)
    # before numpydoc's own handler (default priority 500)
    app.connect("autodoc-process-docstring", _named_tuple_fields_as_written, priority=400)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
