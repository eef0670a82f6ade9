"""What a server really does, checked once per capability by what its answers contain.

Servers silently drop parameters they do not support, so a 200 proves nothing: each probe sends a
request whose answer shows whether the parameter was honoured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from gecko_cli.llm.http.answers import (
    CallError, Unusable, chat_content, continuation_logprob, next_token_logprobs, spaced_top_token,
)
from gecko_cli.llm.http.client import Connection
from gecko_cli.llm.http.schema import response_format, schema_problem


@dataclass
class Capabilities:
    """What the probe saw the server actually do (None: not probed yet)."""

    json_schema: bool | None = None
    json_format: str = "json_schema"  # or "json_object" (llama-cpp-python's {"type": "json_object", "schema"})
    echo_logprobs: bool | None = None
    echo_note: str = ""  # why echoed log-probs were refused, when they were
    top_logprobs: bool | None = None

    def unknown(self, needs: Sequence[str]) -> list[str]:
        """The capabilities in `needs` not probed yet.

        >>> Capabilities(json_schema=True).unknown(["json_schema", "echo"])
        ['echo']
        """
        seen = {"json_schema": self.json_schema, "echo": self.echo_logprobs, "top_logprobs": self.top_logprobs}
        return [n for n in needs if seen[n] is None]

    def describe(self, needs: Sequence[str]) -> str:
        """`JSON schema: yes; prompt log-probs (query likelihood): no` for the capabilities in `needs`."""
        names = {"json_schema": ("JSON schema", self.json_schema),
                 "echo": ("prompt log-probs (query likelihood)", self.echo_logprobs),
                 "top_logprobs": ("top log-probs (relevance)", self.top_logprobs)}
        parts = [f"{names[n][0]}: {'yes' if names[n][1] else 'no'}" for n in needs]
        if "echo" in needs and self.echo_note:
            parts[list(needs).index("echo")] += f" ({self.echo_note})"
        return "; ".join(parts)


async def probe(connection: Connection, model: str, todo: Sequence[str], caps: Capabilities) -> None:
    """Fill in `caps` for each capability in `todo`. A server that is down raises BackendError."""
    if "json_schema" in todo:
        caps.json_schema = False
        schema = {"type": "object", "properties": {"greeting": {"type": "string"}}, "required": ["greeting"],
                  "additionalProperties": False}
        for form in ("json_schema", "json_object"):  # the OpenAI form, then llama-cpp-python's
            body = {"model": model, "messages": [{"role": "user", "content": "Say hi in one word."}],
                    "max_tokens": 64, "temperature": 0, "response_format": response_format(schema, form)}
            ok, content = await _probe_call(connection, "/chat/completions", body, chat_content)
            if ok and schema_problem(content, schema) is None:
                caps.json_schema, caps.json_format = True, form
                break
    if "echo" in todo:
        caps.echo_logprobs, caps.echo_note = await _probe_echo(connection, model)
    if "top_logprobs" in todo:
        body = {"model": model, "prompt": "Question: Is the sky blue? Answer (Yes or No):",
                "max_tokens": 1, "logprobs": 5, "temperature": 0}
        ok, _ = await _probe_call(connection, "/completions", body, lambda d: next_token_logprobs(d, [" Yes", " No"]))
        caps.top_logprobs = ok


async def _probe_call(connection: Connection, path: str, body: dict, parse: Callable[[Any], Any]) -> tuple[bool, Any]:
    """(True, value) when the answer has what was asked; (False, None) when the server refused
    the parameter (4xx) or answered 200 without it. A server that is down raises BackendError."""
    try:
        value, _ = await connection.post(path, body, parse, trust_check=True)
        return True, value
    except (CallError, Unusable):
        return False, None


async def _probe_echo(connection: Connection, model: str) -> tuple[bool, str]:
    """Echoed prompt log-probs must exist AND agree with what the server says when it generates
    the same token: a server that echoes them off by one position passes any shape check."""
    prefix = "The capital of France is"
    body = {"model": model, "prompt": prefix, "max_tokens": 1, "logprobs": 5, "temperature": 0}
    ok, generated = await _probe_call(connection, "/completions", body, spaced_top_token)
    if not ok:
        return False, "no next-token log-probs to check them against"
    token, expected = generated
    prompt = prefix + token
    body = {"model": model, "prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}
    ok, echoed = await _probe_call(connection, "/completions", body, lambda d: continuation_logprob(d, prefix, prompt))
    if not ok:
        return False, "completions with echo returned no prompt log-probs"
    if abs(echoed - expected) > max(0.05, 0.02 * abs(expected)):
        return False, (f"echoed log-prob of {token!r} is {echoed:.3f} but {expected:.3f} as the next token: "
                       "the server's prompt log-probs are misaligned")
    return True, ""
