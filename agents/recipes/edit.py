"""The edit recipe: the coder model changes the code through typed tool calls.

It acts for a bounded number of steps (list, read, write, apply a diff, run a command) in
the sandbox; a critic's "revise" sends its feedback back for another attempt.
"""

from __future__ import annotations

from typing import Literal

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, ConfigDict, Field

from upgate.agents.recipes.base import NoArgs, RecipeArgs, RecipeContext, typed_args
from upgate.agents.structured import call_structured
from upgate.errors import SandboxError
from upgate.policy import ChangeKind
from upgate.prompts import DataFence, load_prompt
from upgate.records import Artifact
from upgate.sandboxes.base import ExecResult, Sandbox


class ToolCall(BaseModel):
    """One coder turn."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["list", "read", "write", "apply_diff", "run", "done"]
    path: str = Field(default=".", max_length=200)
    content: str = Field(default="", max_length=20000)
    command: str = Field(default="", max_length=500)


def run_tool(box: Sandbox, call: ToolCall) -> str:
    """Carry out one tool call; a sandbox failure is reported to the model, not raised."""
    try:
        if call.action == "list":
            return "\n".join(box.list_files(call.path or "."))[:4000]
        if call.action == "read":
            return box.read_file(call.path)[:8000]
        if call.action == "write":
            box.write_file(call.path, call.content)
            return f"wrote {len(call.content)} characters to {call.path}"
        if call.action == "apply_diff":
            res: ExecResult = box.apply_diff(call.content)
            return res.summary(2000)
        if call.action == "run":
            return box.exec(call.command, timeout_s=120).summary(4000)
    except SandboxError as exc:
        return f"error: {exc}"
    return ""


class Edit:
    """The coder agent edits the code with tools."""

    name = "edit"
    kind: ChangeKind = "code"
    version = "1"
    summary = "the coder agent edits the code with tools (read, write, apply a diff, run tests)"
    arguments = NoArgs
    scope: tuple[str, ...] | None = None
    revisable = True

    def apply(self, box: Sandbox, ctx: RecipeContext, args: RecipeArgs) -> tuple[Artifact, ...]:
        """Let the coder model act for at most `max_steps` turns."""
        typed_args(args, NoArgs)
        coder = ctx.coder
        prompt = load_prompt("coder")
        fence = DataFence.new()  # one random tag for this conversation; data cannot close it
        system = prompt.render(
            fence=fence, max_steps=str(coder.max_steps),
            proposal=ctx.proposal.model_dump_json(indent=1), feedback=ctx.feedback or "none",
        )
        files = "\n".join(box.list_files("."))[:3000]
        history: list[BaseMessage] = [
            SystemMessage(content=system),
            HumanMessage(content=f"Files in the workspace:\n{fence.wrap(files)}\nYour first turn."),
        ]
        for step in range(coder.max_steps):
            call = call_structured(coder.model, history, ToolCall, name="tool_call",
                                   retries=coder.retries)
            what = call.command if call.action == "run" else call.path
            ctx.log.append(f"step {step + 1}: {call.action} {what}")
            if call.action == "done":
                break
            result = run_tool(box, call)
            history.append(
                HumanMessage(content=f"Result of {call.action}:\n{fence.wrap(result)}\nNext.")
            )
        return ()


RECIPE = Edit()
