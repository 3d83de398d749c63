"""Tools for the model to call: definitions from Python functions or OpenAI dicts, native formats,
and the decoding constraint that keeps every call well-formed."""

from .formats import FORMATS, ToolFormat, detect_tool_format, get_format
from .spec import Tool, as_tools, parse_docstring, schema_from_function, tool

__all__ = [
    "FORMATS",
    "Tool",
    "ToolFormat",
    "as_tools",
    "detect_tool_format",
    "get_format",
    "parse_docstring",
    "schema_from_function",
    "tool",
]
