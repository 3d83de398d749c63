"""Talk to `edgeslm serve` with the official openai client: chat, a stream, a tool call and a JSON reply.

    pip install "edgeslm[serve,tiny]" openai
    edgeslm serve smollm2-135m --port 8765            # in another terminal
    python examples/serve_client.py                   # EDGESLM_URL / EDGESLM_API_KEY to change them

Any OpenAI-compatible client (JavaScript, C#, Swift, curl...) works the same way: point its base URL at
http://127.0.0.1:8765/v1. edgeslm's extras arrive as extension fields: `confidence`, `field_confidence`,
`escalated`, `schema_support` (read them from `model_extra` in the Python client).
"""

from __future__ import annotations

import json
import os

from openai import OpenAI

client = OpenAI(base_url=os.environ.get("EDGESLM_URL", "http://127.0.0.1:8765/v1"),
                api_key=os.environ.get("EDGESLM_API_KEY", "none"))  # the key only matters with --api-key
model = client.models.list().data[0].id
print("model:", model)

# a plain chat
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello in French."}],
                                   max_tokens=32, temperature=0)
print("chat:", r.choices[0].message.content)

# a stream
print("stream: ", end="")
for chunk in client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Count to five."}],
                                            max_tokens=32, stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
print()

# a tool call: the arguments validate against the tool's schema
weather = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Weather in Paris?"}],
                                   tools=[weather], tool_choice="required", max_tokens=64, temperature=0)
for call in r.choices[0].message.tool_calls or []:
    print("tool call:", call.function.name, json.loads(call.function.arguments))

# a JSON reply that validates against the schema, with edgeslm's confidence
person = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Maria Lopez is 31. Who is she?"}], temperature=0,
    response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": person, "strict": True}})
extra = r.model_extra or {}
print("json:", json.loads(r.choices[0].message.content), "confidence:", extra.get("confidence"),
      "per field:", extra.get("field_confidence"))
