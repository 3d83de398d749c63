"""Support-ticket triage on the device, the unsure few handed to any OpenAI-compatible server.

The small model triages every ticket. A ticket goes to the bigger model only when the local answer
is invalid, or its calibrated confidence is below the threshold fitted for a budget (at most 5 %
of traffic by default), and always with e-mail addresses and phone numbers redacted first. Every
hand-off is written to an audit log (no content) and, with the cloud's answer, to a chat
fine-tuning dataset for the small model.

    pip install ".[tiny,cloud]"
    # 1. fit the threshold on labeled tickets (benchmarks/labeled/support_tickets), once
    python examples/triage_escalation.py --calibrate calibration.json
    # 2. triage, escalating to a server (a frontier API, vLLM, llama.cpp's server...)
    python examples/triage_escalation.py --calibration calibration.json \\
        --base-url http://127.0.0.1:8000/v1 --model big-model [--api-key-env OPENAI_API_KEY] \\
        tickets.jsonl

``tickets.jsonl`` has one ``{"text": ...}`` per line (or pass no file for two sample tickets). The
output is one JSON line per ticket: the triage, who answered, and why it was escalated.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import edgeslm

SCHEMA = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "bug", "account", "feature_request", "shipping"]},
        "priority": {"type": "string", "enum": ["low", "medium", "high"]},
        "product": {"type": "string"},
    },
    "required": ["category", "priority", "product"],
    "additionalProperties": False,
}
INSTRUCTIONS = "Triage this support ticket: its category, its priority and the product it is about."
SAMPLES = [
    "My Nimbus Drive sync stopped after the update and I lost a day of work. Please fix this today!",
    "Could the Tempo Watch show the week number? Would be nice to have, no rush.",
]
LABELED = Path(__file__).resolve().parents[1] / "benchmarks" / "labeled" / "support_tickets"

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
_PHONE = re.compile(r"\+?\d[\d ()-]{7,}\d")


def redact(text: str) -> str:
    """What leaves the device: e-mail addresses and phone numbers replaced."""
    return _PHONE.sub("[phone]", _EMAIL.sub("[email]", text))


def calibrate(model: edgeslm.Model, out: str, budget: float) -> None:
    """Fit the threshold on the labeled tickets and save the report."""
    rows = [json.loads(line) for line in (LABELED / "examples.jsonl").read_text().splitlines() if line.strip()]
    examples = [(r["text"], r["expected"]) for r in rows]
    report = edgeslm.calibrate(model, examples, schema=SCHEMA, budget=budget, instructions=INSTRUCTIONS)
    report.save(out)
    print(f"calibrated on {len(examples)} tickets: AUROC {report.auroc:.2f}, local accuracy "
          f"{report.local_accuracy:.0%}, escalates {report.share_escalated:.1%} -> {out}", file=sys.stderr)


def triage(model: edgeslm.Model, texts: list[str], escalation: edgeslm.Escalation | None) -> None:
    for text in texts:
        x = model.extract(text, SCHEMA, instructions=INSTRUCTIONS, escalation=escalation or False)
        print(json.dumps({"triage": x.data, "answered_by": x.model, "escalated": x.escalated,
                          "trigger": x.escalation_trigger, "escalation_error": x.escalation_error,
                          "confidence": round(x.confidence, 3)}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tickets", nargs="?", help="JSON Lines of {\"text\": ...} (default: two samples)")
    ap.add_argument("--local-model", default="smollm2-135m")
    ap.add_argument("--calibrate", metavar="OUT", help="fit the threshold on the labeled tickets, save it, stop")
    ap.add_argument("--budget", type=float, default=0.05, help="most share of tickets escalated (default 0.05)")
    ap.add_argument("--calibration", metavar="FILE", help="a saved calibration (else: only invalid answers escalate)")
    ap.add_argument("--min-confidence", type=float, help="instead of a calibration: escalate below this confidence")
    ap.add_argument("--base-url", help="the OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--model", help="the model to ask there")
    ap.add_argument("--api-key-env", help="the environment variable holding its key (none sent otherwise)")
    ap.add_argument("--audit-log", default="escalations.audit.jsonl")
    ap.add_argument("--record-to", default="escalations.dataset.jsonl")
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args(argv)
    with edgeslm.load(args.local_model) as model:
        if args.calibrate:
            calibrate(model, args.calibrate, args.budget)
            return 0
        escalation = None
        if args.base_url:
            if not args.model:
                ap.error("--base-url needs --model")
            key = os.environ[args.api_key_env] if args.api_key_env else None
            escalation = edgeslm.Escalation(
                edgeslm.OpenAICompatible(args.base_url, args.model, api_key=key),
                min_confidence=args.calibration if args.calibration else args.min_confidence,
                budget=args.budget if args.calibration else None,
                redact=redact, audit_log=args.audit_log, record_to=args.record_to, timeout=args.timeout,
            )
        texts = SAMPLES
        if args.tickets:
            texts = [json.loads(line)["text"] for line in Path(args.tickets).read_text().splitlines() if line.strip()]
        triage(model, texts, escalation)
        print(f"stats: {json.dumps(model.stats() if escalation is None else escalation.stats.snapshot())}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
