"""The upgrade-cycle graph: one builder, compiled with whatever checkpointer the caller gives.

    observe -> propose -> policy_check -> implement -> critique --(revise)--> implement
    critique -> gate --(reject)--> record
    gate -> approve (interrupt) --(reject)--> record
    approve -> deploy -> monitor --(regression)--> rollback -> record
    deploy (staged, [rollout] enabled) -> rollout --(promoted)--> monitor
    rollout --(aborted: traffic restored to the stable version)--> record
    monitor -> record
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from upgate.graphs import nodes, rollout_node
from upgate.graphs.deps import Deps
from upgate.graphs.state import CycleState


def _stop_if_ended(next_node: str) -> Any:
    def route(state: CycleState) -> str:
        if state.get("outcome") in ("failed", "blocked"):
            return "record"
        return next_node

    return route


def build_graph() -> StateGraph[CycleState, Deps, CycleState, CycleState]:
    """The uncompiled graph (a builder); compile it with a checkpointer."""
    g: StateGraph[CycleState, Deps, CycleState, CycleState] = StateGraph(
        CycleState, context_schema=Deps
    )
    g.add_node("observe", nodes.observe)
    g.add_node("propose", nodes.propose_node)
    g.add_node("policy_check", nodes.policy_check)
    g.add_node("implement", nodes.implement_node)
    g.add_node("critique", nodes.critique_node)
    g.add_node("revise", nodes.revise)
    g.add_node("gate", nodes.gate)
    g.add_node("approve", nodes.approve)
    g.add_node("deploy", nodes.deploy)
    g.add_node("rollout", rollout_node.rollout)
    g.add_node("monitor", nodes.monitor)
    g.add_node("rollback", nodes.rollback)
    g.add_node("record", nodes.record)

    g.add_edge(START, "observe")
    g.add_edge("observe", "propose")
    g.add_conditional_edges("propose", _stop_if_ended("policy_check"),
                            ["policy_check", "record"])
    g.add_conditional_edges("policy_check", _stop_if_ended("implement"),
                            ["implement", "record"])
    g.add_conditional_edges("implement", _stop_if_ended("critique"), ["critique", "record"])
    g.add_conditional_edges("critique", nodes.after_critique, {
        "revise": "revise", "gate": "gate", "record": "record",
    })
    g.add_edge("revise", "implement")
    g.add_conditional_edges("gate", nodes.after_gate, ["approve", "deploy", "record"])
    g.add_conditional_edges("approve", nodes.after_approve, ["approve", "deploy", "record"])
    g.add_conditional_edges("deploy", rollout_node.after_deploy, ["rollout", "monitor", "record"])
    g.add_conditional_edges("rollout", rollout_node.after_rollout, ["monitor", "record"])
    g.add_conditional_edges("monitor", nodes.after_monitor, ["rollback", "record"])
    g.add_edge("rollback", "record")
    g.add_edge("record", END)
    return g


def strict_serde() -> JsonPlusSerializer:
    """The checkpoint serializer in strict msgpack mode: no arbitrary types on load."""
    return JsonPlusSerializer(allowed_msgpack_modules=None)


def sqlite_checkpointer(state_dir: Path) -> SqliteSaver:
    """A SQLite checkpointer in the state folder."""
    state_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(state_dir / "checkpoints.sqlite", check_same_thread=False)
    return SqliteSaver(conn, serde=strict_serde())


def compile_graph(
    checkpointer: BaseCheckpointSaver[Any],
) -> CompiledStateGraph[CycleState, Deps, CycleState, CycleState]:
    """The runnable graph."""
    return build_graph().compile(checkpointer=checkpointer)
