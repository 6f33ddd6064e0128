"""The configuration examples in the README are real: each validates as a config file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ferrotunnel.cli.settings import load_settings
from ferrotunnel.core.plugin import load_plugins

ROOT = Path(__file__).resolve().parent.parent
TOML_BLOCKS = re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=lambda b: b.splitlines()[0][:40])
def test_readme_configuration_examples_validate(block: str, tmp_path: Path) -> None:
    path = tmp_path / "example.toml"
    path.write_text(block)
    loaded = load_settings(load_plugins(), str(path))
    assert loaded.raw  # it declared something


def test_the_readme_has_configuration_examples() -> None:
    assert TOML_BLOCKS
