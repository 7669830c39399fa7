"""What a cycle took and cost, from the records that exist: the ledger's times, the meter's
token reports and (for cycles a batch ran) the meter's cost record with sandbox seconds.

Every node appends to the ledger when it ends, so a node's wall time is the time from the
previous node's record (or the cycle's start) to its own; the time between the request for
approval and the decision is a person's, counted apart. Tokens are the `usage` records the
meter writes per agent call; sandbox wall and CPU seconds are in the batch's `cycle_cost`
record. A cycle run outside a batch is not metered: its tokens and sandbox seconds are
absent (None), not zero.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from upgate.autonomy import COST_EVENT, COST_NODE
from upgate.ledger import Entry

GRAPH_NODES = frozenset({
    "start", "observe", "propose", "policy_check", "implement", "critique", "revise", "gate",
    "approve", "deploy", "monitor", "rollback", "record",
})
WAITING = "waiting for a person"


def _at(entry: Entry) -> datetime | None:
    try:
        return datetime.fromisoformat(entry.at)
    except ValueError:
        return None


def cycle_cost(entries: list[Entry]) -> dict[str, Any]:
    """Wall seconds per node (in order of first appearance), the wait for people, tokens
    per agent call, and the sandbox's wall and CPU seconds where a meter recorded them."""
    per_node: dict[str, float] = {}
    previous: datetime | None = None
    first: datetime | None = None
    last: datetime | None = None
    for e in entries:
        if e.node not in GRAPH_NODES:
            continue
        at = _at(e)
        if at is None:
            continue
        first = first or at
        last = at
        if previous is not None and e.node != "start":
            name = WAITING if e.node == "approve" else e.node
            per_node[name] = per_node.get(name, 0.0) + max(0.0, (at - previous).total_seconds())
        previous = at
    tokens: dict[str, int] = {}
    for e in entries:
        if e.node == "usage":
            tokens[e.event] = tokens.get(e.event, 0) + int(e.payload.get("total_tokens", 0))
    metered = [e.payload for e in entries if e.node == COST_NODE and e.event == COST_EVENT]
    return {
        "wall_s": round((last - first).total_seconds(), 3) if first and last else 0.0,
        "per_node_s": {k: round(v, 3) for k, v in per_node.items()},
        "tokens": sum(tokens.values()) if tokens or metered else None,
        "tokens_by_call": tokens,
        "sandbox_s": _sum(metered, "sandbox_s"),
        "sandbox_cpu_s": _sum(metered, "sandbox_cpu_s"),
        "metered": bool(metered),
    }


def _sum(payloads: list[dict[str, Any]], key: str) -> float | None:
    values = [float(p[key]) for p in payloads if isinstance(p.get(key), int | float)]
    return round(sum(values), 3) if values else None
