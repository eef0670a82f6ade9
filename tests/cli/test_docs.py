"""The docs stay true: every command has help with an example and a README section with a runnable
example, in pipeline order (like sqlite-utils); the docs' links resolve inside the repository;
the README stays short."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from gecko_cli.cli import STAGES, app
from tests.conftest import ROOT

# The order a user runs them in (and the order of the README's sections).
PIPELINE = ("generate", "retrieve", "rerank", "fuse", "mine-negatives", "pretrain", "finetune", "evaluate")
README_PATH = ROOT / "README.md"
README = README_PATH.read_text(encoding="utf-8")
DOCS = [README_PATH, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 12_000

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})([^\n]*)\n(.*?)^ {0,3}\1[ \t]*$", re.M | re.S)  # info, body
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.M)
SHELL_BREAKS = {"|", "||", "&", "&&", ";", "(", ")", "do", "then", "else", "time", "nice"}
REDIRECTS = {"<", ">", ">>", "2>", "&>"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")


def without_code(text: str) -> str:
    """Markdown with fenced blocks and inline code removed (links there are examples, not links).

    >>> without_code("a `[x](y)` b\\n```\\n[c](d)\\n```\\n")
    'a  b\\n\\n'
    """
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def sections(text: str, level: int = 3) -> dict[str, str]:
    """Heading text -> its body, up to the next heading of the same or a higher level.

    >>> sections("### a\\nx\\n#### b\\ny\\n### c\\nz\\n")
    {'a': 'x\\n#### b\\ny\\n', 'c': 'z\\n'}
    """
    blanked = FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), text)  # same offsets, no code
    heads = [m for m in HEADING.finditer(blanked) if len(m.group(1)) <= level]
    found: dict[str, str] = {}
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        if len(head.group(1)) == level:
            found[head.group(2)] = text[head.end() + 1:end]
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading.

    >>> slug("The hnswlib index: M = 16, `--ef 100`")
    'the-hnswlib-index-m--16---ef-100'
    >>> slug("Goals (issue 6), judged on the main model")
    'goals-issue-6-judged-on-the-main-model'
    """
    return re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set()
    for match in HEADING.finditer(text):
        base = slug(match.group(2))
        found.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return found


def links(path: Path) -> list[str]:
    text = without_code(path.read_text(encoding="utf-8"))
    return LINK.findall(text) + REFERENCE.findall(text)


def relative_links() -> list[tuple[Path, str]]:
    return [(path, target) for path in DOCS for target in links(path)
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)]


def shell_lines(info: str, body: str) -> list[str]:
    r"""The commands of a fenced shell block, continuation lines joined; in a `console` block only
    the lines after a `$ ` prompt (the others are output).

    >>> shell_lines("console", "$ gecko fuse \\\n  --k 0\ngecko fuse: <stdin>:2: oops\n")
    ['gecko fuse --k 0']
    """
    lines = re.sub(r"[ \t]*\\\n\s*", " ", body).splitlines()
    if info.strip() == "console":
        return [line[2:] for line in lines if line.startswith("$ ")]
    return [line for line in lines if line.strip()]


def invocations(text: str) -> list[tuple[str, list[str]]]:
    """(command, options) of every `gecko NAME ...` in the fenced blocks of `text`.

    >>> invocations("```sh\\nhead x | gecko fuse --k 0 -i a.jsonl > b # c\\n```\\n")
    [('fuse', ['--k', '-i'])]
    """
    found = []
    for block in FENCE.finditer(text):
        for line in shell_lines(block.group(2), block.group(3)):
            lexer = shlex.shlex(line, posix=True, punctuation_chars="|&;()<>")
            lexer.whitespace_split = True
            tokens = list(lexer)
            for i, token in enumerate(tokens):
                starts = i == 0 or tokens[i - 1] in SHELL_BREAKS or ENV_ASSIGNMENT.match(tokens[i - 1])
                if token == "gecko" and starts and i + 1 < len(tokens):
                    options, j = [], i + 2
                    while j < len(tokens) and tokens[j] not in SHELL_BREAKS:
                        if tokens[j] in REDIRECTS:
                            j += 2
                            continue
                        if tokens[j].startswith("-"):
                            options.append(tokens[j].split("=", 1)[0])
                        j += 1
                    found.append((tokens[i + 1], options))
    return found


def known_options(name: str) -> set[str]:
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    return {"--help", "-h"} | {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def test_root_help_lists_every_command(runner):
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in STAGES:
        assert name in result.stdout


@pytest.mark.parametrize("name", list(STAGES))
def test_command_help_has_an_example(runner, name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0
    assert "Examples:" in result.stdout and f"gecko {name}" in result.stdout


def test_pipeline_lists_every_command():
    assert sorted(PIPELINE) == sorted(STAGES)


def test_readme_has_a_section_per_command_in_pipeline_order():
    headings = [m.group(1) for m in re.finditer(r"^### `gecko ([a-z-]+)`\s*$", README, re.M)]
    assert headings == list(PIPELINE), f"README's command sections: {headings}"


@pytest.mark.parametrize("name", PIPELINE)
def test_readme_section_has_a_runnable_example(name):
    body = sections(README).get(f"`gecko {name}`")
    assert body is not None, f"README has no section for gecko {name}"
    commands = [command for command, _ in invocations(body)]
    assert name in commands, f"README's gecko {name} section has no fenced example running gecko {name}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_examples_use_real_options(path):
    bad = []
    for name, options in invocations(path.read_text(encoding="utf-8")):
        if name not in STAGES:
            bad.append(f"gecko {name}: no such command")
            continue
        bad += [f"gecko {name} {opt}" for opt in options if opt not in known_options(name)]
    assert not bad, f"{path.name}: examples with unknown commands or options: {bad}"


def test_relative_links_resolve_inside_the_repository():
    missing, outside = [], []
    for path, target in relative_links():
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.is_relative_to(ROOT):
            outside.append(f"{path.name}: {target}")
        elif not resolved.exists():
            missing.append(f"{path.name}: {target}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            missing.append(f"{path.name}: {target} (no such heading)")
    assert not outside, f"links that leave the repository: {outside}"
    assert not missing, f"links to nothing: {missing}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_do_not_point_outside_the_repository(path):
    # A path a user's clone does not have, even when written as code rather than as a link.
    assert "../shared" not in path.read_text(encoding="utf-8")


def test_readme_stays_short():
    size = len(README.encode("utf-8"))
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes; move detail to docs/"


def test_docs_index_lists_every_doc():
    listed = {target.partition("#")[0] for target in links(README_PATH)}
    unlisted = [p.name for p in DOCS[1:] if f"docs/{p.name}" not in listed]
    assert not unlisted, f"README's documentation index misses {unlisted}"


def test_version(runner):
    assert runner.invoke(app, ["--version"]).stdout.startswith("gecko ")
