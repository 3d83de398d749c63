"""MkDocs hooks for the edgeslm docs (see mkdocs.yml).

* ``on_page_markdown``: the marker ``<!-- cli-help -->`` in a page becomes the ``--help`` text of
  every ``edgeslm`` command, taken from ``edgeslm.cli.build_parser()`` at build time, so the
  command-line reference cannot drift from the code.
* ``on_page_markdown``: the marker ``<!-- bench-report: PATH -->`` becomes the tables of the bench
  record at PATH (a ``python -m edgeslm.bench --json`` file, relative to the repository), rendered
  by the bench's own Markdown writer, so the measurements page shows a run's figures as it wrote them.
* ``on_page_content``: the docstrings write cross-references the Sphinx way
  (``:class:`~edgeslm.Model```), which mkdocstrings renders as text followed by code. This drops
  the role prefix and the ``~``, and turns a reST literal-block marker (``Hierarchy::``) into a
  single colon. Only the HTML output changes.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

CLI_MARKER = "<!-- cli-help -->"
_BENCH_MARKER = re.compile(r"<!-- bench-report: (\S+) -->")
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):(?=<code>)")
_TILDE = re.compile(r"<code>~(?=[\w.])")
_LITERAL = re.compile(r"(\w)::</p>")


def _cli_help() -> str:
    src = Path(__file__).resolve().parents[1] / "src"
    if src.is_dir() and str(src) not in sys.path:
        sys.path.insert(0, str(src))
    os.environ["COLUMNS"] = "100"  # argparse wraps its help to the terminal's width
    from edgeslm.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    out = ["## `edgeslm`", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, p in sub.choices.items():
        title, text = f"`edgeslm {name}`", p.format_help().rstrip()
        if name == "bench":  # a pass-through to python -m edgeslm.bench, which has the options
            from edgeslm.bench.__main__ import _parser as bench_parser

            title, text = "`edgeslm bench` (`python -m edgeslm.bench`)", bench_parser().format_help().rstrip()
        out += [f"## {title}", "", "```text", text, "```", ""]
    return "\n".join(out)


def _bench_report(rel: str) -> str:
    """The tables of the bench record at *rel*, headings one level down, under a line saying when."""
    import json

    root = Path(__file__).resolve().parents[1]
    if str(root / "src") not in sys.path:
        sys.path.insert(0, str(root / "src"))
    from edgeslm.bench.report import Report

    report = Report.from_json(json.loads((root / rel).read_text(encoding="utf-8")))
    lines = report.markdown().splitlines()[1:]  # its own title: said below instead
    body = "\n".join("#" + line if line.startswith("## ") else line for line in lines)
    kind = "`--quick` run" if report.quick else "run"
    return (f"Generated from `{rel}`, a `python -m edgeslm.bench` {kind} started {report.started_at}.\n"
            + body)


def on_page_markdown(markdown: str, **_: Any) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, _cli_help())
    return _BENCH_MARKER.sub(lambda m: _bench_report(m.group(1)), markdown)


def on_page_content(html: str, **_: Any) -> str:
    html = _ROLE.sub("", html)
    html = _TILDE.sub("<code>", html)
    return _LITERAL.sub(r"\1:</p>", html)
