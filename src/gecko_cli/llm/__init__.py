"""LLM backends: the protocol in `base`, the embedded model in `local` (imported lazily: torch)."""

from gecko_cli.llm.base import LLMBackend, Message

__all__ = ["LLMBackend", "Message"]
