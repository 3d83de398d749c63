"""Support-ticket triage with a pydantic model: the result always validates.

    pip install ".[tiny]"
    python examples/extract_ticket.py
"""

from enum import Enum

from pydantic import BaseModel, Field

import edgeslm


class Severity(str, Enum):
    low = "low"
    medium = "medium"
    high = "high"


class Ticket(BaseModel):
    customer: str = Field(description="name of the person writing")
    product: str = Field(description="product or page affected")
    severity: Severity
    summary: str = Field(max_length=100)


TICKETS = [
    "Hi, Dana Reyes here. The checkout page of our shop returns error 502 since 9am. We lose sales!",
    "Hello, this is Tom. The mobile app shows the wrong currency on the invoice screen. Not urgent.",
]

print("schema support:", edgeslm.check_schema(Ticket).level)  # exact: the grammar enforces it all

with edgeslm.load("smollm2-135m") as model:
    for text in TICKETS:
        x = model.extract(text, Ticket, instructions="Triage this support ticket.")
        ticket: Ticket = x.data  # a validated Ticket instance
        print(ticket.model_dump_json())
        print(f"  confidence={x.confidence:.2f} attempts={x.attempts} "
              f"ttft={x.usage.time_to_first_token_s * 1000:.0f} ms "
              f"(reused {x.usage.reused_prompt_tokens} prompt tokens)")
