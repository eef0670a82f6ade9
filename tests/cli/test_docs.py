"""Every command has help text with an example and a section in the README (like sqlite-utils)."""

import re

import pytest

from gecko_cli.cli import STAGES, app
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


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


@pytest.mark.parametrize("name", list(STAGES))
def test_readme_documents_the_command(name):
    assert re.search(rf"^### `gecko {name}`", README, re.M), f"README has no section for gecko {name}"
    assert f"gecko {name} " in README


def test_version(runner):
    assert runner.invoke(app, ["--version"]).stdout.startswith("gecko ")
