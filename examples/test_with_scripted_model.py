"""Testing your own app code without a model: edgeslm.testing.scripted_model.

The app function below routes a support ticket with a local model. Its tests pin what the model
"says" with a script, so they check the app's logic (what it does with the answer, a low
confidence, a tool call) in milliseconds, with no download. Run: python -m pytest examples/test_with_scripted_model.py
"""

from __future__ import annotations

from typing import Any

import edgeslm
from edgeslm.testing import scripted_model

TICKET = {
    "type": "object",
    "properties": {"priority": {"enum": ["low", "normal", "high"]}, "team": {"type": "string"}},
    "required": ["priority", "team"],
    "additionalProperties": False,
}


def route(model: edgeslm.Model, text: str) -> dict[str, Any]:
    """The app's code: extract priority and team; a high priority pages the on-call person."""
    x = model.extract(text, TICKET)
    return {**x.data, "page_oncall": x.data["priority"] == "high", "sure": x.confidence >= 0.5}


def lookup_order(order_id: str) -> str:
    """Look an order up (the app's own tool)."""
    return f"order {order_id}: shipped"


def answer(model: edgeslm.Model, question: str) -> str:
    """The app's code: let the model call lookup_order, and return the tool's result."""
    r = model.run_tools([{"role": "user", "content": question}], tools=[lookup_order])
    return r.text


def test_route_pages_oncall_for_high_priority() -> None:
    model = scripted_model({"priority": "high", "team": "billing"})  # keys in the schema's order
    assert route(model, "I was charged twice!") == {"priority": "high", "team": "billing",
                                                    "page_oncall": True, "sure": True}


def test_route_output_is_valid_even_when_the_model_strays() -> None:
    # the "model" tries to write a priority outside the enum: the grammar keeps the answer valid
    model = scripted_model({"priority": "urgent!!", "team": "billing"})
    out = route(model, "help")
    assert out["priority"] in ("low", "normal", "high")


def test_answer_calls_the_tool() -> None:
    call = '<tool_call>\n{"name": "lookup_order", "arguments": {"order_id": "A17"}}\n</tool_call>'
    model = scripted_model(turns=[call, "Your order A17 has shipped."])  # Qwen/Hermes tool tags
    assert "A17" in answer(model, "Where is order A17?")
