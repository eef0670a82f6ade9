"""How texts are presented to an embedder: plain, the Gecko unified format, or a template.

A model fine-tuned by gecko stores its templates in `gecko.json` beside its weights,
so `gecko evaluate --model DIR` formats exactly as training did with no flag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gecko_cli.contract.errors import UsageError

PRESETS = {
    "gecko": ("task: {task} | query: {text}", "title: {title} | text: {text}"),
    "plain": ("{text}", "{title} {text}"),
}
MODEL_TEMPLATES_FILE = "gecko.json"
TEXT_FORMATS = tuple(PRESETS)  # how training writes its texts (`--text-format`): the presets, Gecko's first


def check_text_format(value: str) -> None:
    """`--text-format` is one of TEXT_FORMATS (the stages check it before reading input, TrainConfig again)."""
    if value not in TEXT_FORMATS:
        raise UsageError(f"--text-format takes {' or '.join(TEXT_FORMATS)}, got {value!r}")


@dataclass(frozen=True)
class Templates:
    """Query-side and document-side templates with `{text}`, `{title}`, `{task}` slots."""

    query: str = PRESETS["plain"][0]
    document: str = PRESETS["plain"][1]
    task: str = "search result"

    def render_query(self, text: str, task: str | None = None) -> str:
        """The query side.

        >>> Templates(*PRESETS["gecko"]).render_query("why?", "question answering")
        'task: question answering | query: why?'
        """
        return self.query.format(text=text, task=task or self.task, title="none").strip()

    def render_document(self, text: str, title: str | None = None) -> str:
        """Plain joins title and text like BEIR/MTEB; `title: none` stands in for no title.

        >>> Templates().render_document("Body.", "")
        'Body.'
        >>> Templates(*PRESETS["gecko"]).render_document("Body.", "")
        'title: none | text: Body.'
        """
        title = (title or "").strip()
        if not title and "title: {title}" in self.document:
            title = "none"
        return self.document.format(text=text, title=title, task=self.task).strip()


def format_query(query: str, task: str | None, text_format: str = "gecko") -> str:
    """Query side as training feeds it: the Gecko unified format (Gecko §3.1), or plain text.

    >>> format_query("is the GIL gone?", "question answering")
    'task: question answering | query: is the GIL gone?'
    >>> format_query("is the GIL gone?", "question answering", "plain")
    'is the GIL gone?'
    """
    if text_format == "plain":
        return query
    return PRESETS["gecko"][0].format(task=task or DEFAULT_TASK, text=query)


def format_document(text: str, title: str | None = None, text_format: str = "gecko") -> str:
    """Document side: the unified format (`title: none` when there is no title), or plain
    title and text joined as BEIR/MTEB do.

    >>> format_document("Body.", "")
    'title: none | text: Body.'
    >>> format_document("Body.", "Title", "plain"), format_document("Body.", "", "plain")
    ('Title Body.', 'Body.')
    """
    if text_format == "plain":
        return Templates().render_document(text, title)
    return PRESETS["gecko"][1].format(title=(title or "").strip() or "none", text=text)


def _template(value: str, side: int) -> str:
    if value in PRESETS:
        return PRESETS[value][side]
    if "{text}" not in value:
        raise UsageError(f"prompt template {value!r} has no {{text}} slot (or use a preset: {', '.join(PRESETS)})")
    return value


def stored_templates(model_path: str) -> Templates | None:
    """The templates a gecko-trained model saved, if any."""
    path = Path(model_path) / MODEL_TEMPLATES_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return Templates(data["query_template"], data["document_template"], data.get("task", "search result"))


def resolve_templates(model_path: str, query: str | None, document: str | None, task: str | None,
                      mode_task: str | None = None) -> Templates:
    """Flags win, then what the model stored, then plain text (what MTEB feeds a plain model).

    The task: `--task`, then the evaluation mode's own (`sentence similarity` for STS), then the
    model's stored task (the retrieval default it was saved with), then `search result`: a task
    saved for retrieval must not stand in for another mode's.

    >>> import json, tempfile
    >>> resolve_templates(tempfile.mkdtemp(), None, None, None).render_query("why?", "question answering")
    'why?'
    >>> model = tempfile.mkdtemp()
    >>> _ = (Path(model) / MODEL_TEMPLATES_FILE).write_text(json.dumps({"query_template": PRESETS["gecko"][0],
    ...     "document_template": PRESETS["gecko"][1], "task": "search result"}))
    >>> resolve_templates(model, None, None, None, "sentence similarity").render_query("A man sings.")
    'task: sentence similarity | query: A man sings.'
    >>> resolve_templates(model, None, None, None).render_query("why?")
    'task: search result | query: why?'
    >>> resolve_templates(model, "plain", None, "ignored").render_query("why?")
    'why?'
    """
    base = stored_templates(model_path) or Templates()
    return Templates(_template(query, 0) if query else base.query,
                     _template(document, 1) if document else base.document,
                     task or mode_task or base.task)


# The task a query carries when its record names none (`gecko pretrain --task`, a trained model's default).
DEFAULT_TASK = "search result"
# What `SentenceTransformer(path).encode(texts, prompt_name=...)` prepends to a gecko-trained model's
# inputs outside gecko: the Gecko presets with the default task and no title. gecko itself reads the
# per-task templates from gecko.json.
SAVED_PROMPTS = {"query": PRESETS["gecko"][0].format(task=DEFAULT_TASK, text=""),
                 "document": PRESETS["gecko"][1].format(title="none", text="")}
