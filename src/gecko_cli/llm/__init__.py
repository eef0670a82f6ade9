"""LLM backends: the protocol (`base`), the registry `--llm` goes through (`registry`, with gecko's
own backends in `builtin`), the result cache, token accounting, scoring prompts, and the two
backends — `local` (the embedded model; imports torch) and `http` (any OpenAI-compatible server) —
which the registry imports only when one is opened."""

from gecko_cli.llm.base import BaseBackend, Failure, LLMBackend, Message

__all__ = ["BaseBackend", "Failure", "LLMBackend", "Message"]
