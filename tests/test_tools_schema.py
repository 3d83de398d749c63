"""Tools from Python functions, the decorator and OpenAI dicts: schemas, docstrings, invocation (no model)."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from typing import Annotated, Any, Literal, Optional

import pytest

import edgeslm
from edgeslm.decoding.schema import check_schema, make_validator
from edgeslm.tools import as_tools, parse_docstring, schema_from_function


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


@dataclasses.dataclass
class Point:
    x: float
    y: float = 0.0


def everything(
    city: str,
    days: int,
    ratio: float,
    flag: bool,
    mode: Literal["fast", "slow"],
    unit: Unit = Unit.C,
    note: Optional[str] = None,  # noqa: UP045 - the typing spelling is what users write
    tags: list[str] | None = None,
    scores: dict[str, float] | None = None,
    pair: tuple[int, str] = (1, "a"),
    many: tuple[int, ...] = (),
    anything: Any = None,
    where: Point | None = None,
    label: Annotated[str, "a short label"] = "x",
) -> str:
    """Do everything at once.

    Longer explanation that is part of the description.

    Args:
        city: The city name.
        days (int): How many days,
            counted from today.
        ratio: A ratio.

    Returns:
        Nothing useful.
    """
    return "ok"


def test_schema_from_function_covers_type_hints() -> None:
    schema, hints, doc = schema_from_function(everything)
    p = schema["properties"]
    assert doc == "Do everything at once.\n\nLonger explanation that is part of the description."
    assert schema["required"] == ["city", "days", "ratio", "flag", "mode"]
    assert p["city"] == {"type": "string", "description": "The city name."}
    assert p["days"] == {"type": "integer", "description": "How many days, counted from today."}
    assert p["ratio"]["type"] == "number" and p["flag"] == {"type": "boolean"}
    assert p["mode"] == {"type": "string", "enum": ["fast", "slow"]}
    assert p["unit"] == {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}
    assert p["note"] == {"type": ["string", "null"], "default": None}
    assert p["tags"] == {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}], "default": None}
    assert p["scores"]["anyOf"][0] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert p["pair"] == {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
                         "minItems": 2, "maxItems": 2, "default": [1, "a"]}
    assert p["many"] == {"type": "array", "items": {"type": "integer"}, "default": []}
    assert p["anything"] == {"default": None}
    assert p["where"]["anyOf"][0] == {"$ref": "#/$defs/Point"}
    assert schema["$defs"]["Point"] == {"type": "object", "properties": {"x": {"type": "number"},
                                                                          "y": {"type": "number"}}, "required": ["x"]}
    assert p["label"] == {"type": "string", "description": "a short label", "default": "x"}
    assert hints["unit"] is Unit
    assert check_schema(schema)  # the grammar can serve it
    make_validator(schema).validate({"city": "Oslo", "days": 2, "ratio": 1, "flag": True, "mode": "fast",
                                     "where": {"x": 1.5}})


def test_numpy_and_sphinx_docstrings() -> None:
    doc = """Find things.

    Parameters
    ----------
    query : str
        What to look for,
        in plain words.
    limit : int
        At most this many.

    Returns
    -------
    list
    """
    summary, params = parse_docstring(doc)
    assert summary == "Find things."
    assert params == {"query": "What to look for, in plain words.", "limit": "At most this many."}
    summary, params = parse_docstring("Sum.\n\n:param a: first\n:param int b: second\n:returns: the sum")
    assert summary == "Sum." and params == {"a": "first", "b": "second"}


def test_decorator_with_overrides_stays_callable() -> None:
    @edgeslm.tool
    def add(a: int, b: int = 2) -> int:
        """Add two numbers."""
        return a + b

    @edgeslm.tool(name="mul", description="Multiply.")
    def multiply(a: int, b: int) -> int:
        return a * b

    assert isinstance(add, edgeslm.Tool) and add.name == "add" and add.description == "Add two numbers."
    assert add(1) == 3 and add.invoke({"a": 1, "b": 5}) == 6
    assert multiply.name == "mul" and multiply.description == "Multiply."
    assert multiply.to_openai() == {"type": "function", "function": {
        "name": "mul", "description": "Multiply.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                       "required": ["a", "b"]}}}


def test_openai_dicts_and_names() -> None:
    tools = as_tools([
        {"type": "function", "function": {"name": "f", "description": "F.", "parameters": {
            "type": "object", "properties": {"x": {"type": "string"}}}}},
        {"name": "g"},  # flat (BFCL-style) dict, no parameters
        everything,
    ])
    assert [t.name for t in tools] == ["f", "g", "everything"]
    assert tools[0].fn is None and tools[1].parameters == {"type": "object", "properties": {}}
    with pytest.raises(edgeslm.ToolCallError, match="two tools are named"):
        as_tools([everything, everything])
    with pytest.raises(edgeslm.ToolCallError, match="no function name") as e:
        as_tools([{"type": "function", "function": {}}])
    assert e.value.hint
    with pytest.raises(edgeslm.ToolCallError, match="not a tool"):
        as_tools([42])
    with pytest.raises(edgeslm.ToolCallError, match="has no Python function"):
        tools[0].invoke({"x": "1"})


def test_invoke_builds_enums_dataclasses_and_pydantic_models() -> None:
    pydantic = pytest.importorskip("pydantic")

    class Address(pydantic.BaseModel):
        street: str
        zip_code: str

    def ship(to: Address, unit: Unit, at: Point, items: list[Point], count: float = 1.0) -> str:
        """Ship."""
        assert isinstance(to, Address) and isinstance(unit, Unit) and isinstance(at, Point)
        assert all(isinstance(p, Point) for p in items) and isinstance(count, float)
        return f"{to.street} {unit.value} {at.x} {len(items)} {count}"

    (t,) = as_tools([ship])
    assert t.parameters["properties"]["to"] == {"$ref": "#/$defs/Address"}
    assert t.parameters["$defs"]["Address"]["required"] == ["street", "zip_code"]
    assert check_schema(t.parameters)
    args = {"to": {"street": "Main", "zip_code": "1"}, "unit": "fahrenheit", "at": {"x": 1, "y": 2},
            "items": [{"x": 3}], "count": 2}
    make_validator(t.parameters).validate(args)
    assert t.invoke(args) == "Main fahrenheit 1.0 1 2.0"


async def _add_later(a: int, b: int = 2) -> int:
    """Add two numbers, after yielding to the event loop."""
    await asyncio.sleep(0)
    return a + b


async def _fail_later(a: int) -> int:
    """Fail, after yielding to the event loop."""
    await asyncio.sleep(0)
    raise ValueError(f"no {a}")


def test_invoke_awaits_an_async_tool_with_or_without_a_running_loop() -> None:
    add, fail = as_tools([_add_later, _fail_later])
    assert add.invoke({"a": 1}) == 3  # no loop running: asyncio.run
    with pytest.raises(ValueError, match="no 1"):
        fail.invoke({"a": 1})

    async def main() -> tuple[int, str]:
        # inside a running loop, asyncio.run raises; the tool must still run, and its error come through
        value = add.invoke({"a": 4, "b": 5})
        with pytest.raises(ValueError, match="no 2") as e:
            fail.invoke({"a": 2})
        return value, str(e.value)

    assert asyncio.run(main()) == (9, "no 2")


class Opaque:
    pass


def test_unsupported_annotation_is_a_clear_error() -> None:
    def f(x: Opaque) -> None:
        pass

    with pytest.raises(edgeslm.ToolCallError, match="parameter 'x'") as e:
        as_tools([f])
    assert "pydantic" in (e.value.hint or "")
