"""RuleBot: a small third-party runtime for sessionactors, found through an entry point.

It answers ``message`` actions with an ``agent`` message chosen from a tiny rule
table and "runs" commands by echoing them. It is synchronous (everything is
answered from ``begin``), so it only needs ``start``, ``begin`` and ``stop``;
``validate`` and ``state`` show the optional parts. Register it in the
``sessionactors.runtimes`` entry point group and select it with
``runtime = "rulebot"``.
"""

from __future__ import annotations

from typing import Any

from sessionactors.runtime import (
    ActionError,
    Output,
    Runtime,
    RuntimeContext,
    Status,
    agent_message,
    observation,
)

__all__ = ["RULES", "RuleBotRuntime", "reply"]

# (keyword, answer): the first keyword found among the message's words wins.
RULES: list[tuple[str, str]] = [
    ("hello", "Hello! Send `run` actions to execute commands."),
    ("hi", "Hello! Send `run` actions to execute commands."),
    ("help", "I know these words: hello, help, count, bye. A `run` action is echoed back."),
    ("count", "You have sent me {messages} message(s) in this session."),
    ("bye", "Goodbye! Reconnect with your session token to continue."),
]
FALLBACK = "I did not understand that; say `help`."


def reply(content: str, messages: int) -> str:
    """The rule-table answer to one user message."""
    words = {word.strip(".,!?;:").lower() for word in content.split()}
    for keyword, answer in RULES:
        if keyword in words:
            return answer.format(messages=messages)
    return FALLBACK


class RuleBotRuntime(Runtime):
    """Answers messages from a rule table; echoes ``run`` commands; no files."""

    name = "rulebot"
    actions = frozenset({"message", "run"})  # read/write are refused by Runtime.validate

    def __init__(self, ctx: RuntimeContext) -> None:
        super().__init__(ctx)  # cheap: nothing is started here
        self.messages = int(ctx.state.get("messages", 0))  # survives passivation via state()

    def start(self) -> list[Output]:
        return [Status("STATUS$RUNTIME_STARTED", "RuleBot is ready")]

    def validate(self, action: dict[str, Any]) -> None:
        super().validate(action)
        key = "content" if action["action"] == "message" else "command"
        if not isinstance(action["args"].get(key), str):
            raise ActionError(f"{key!r} must be a string")

    def begin(self, action_event: dict[str, Any]) -> list[Output]:
        args, cause = action_event["args"], action_event["id"]
        if action_event["action"] == "message":
            self.messages += 1
            return [agent_message(reply(args["content"], self.messages), cause)]
        command = args["command"]
        extras = {"command": command, "exit_code": 0}
        return [observation("run", command + "\n", cause, extras, "Command finished")]

    def state(self) -> dict[str, Any]:
        return {"messages": self.messages}

    def stop(self) -> None:
        pass  # nothing to release
