"""The README stays true to the code: its config examples load, its commands exist."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import yaml

from bot.cli.main import parser
from bot.core.config import BotConfig
from bot.core.runbook import default_runbook_text, parse_runbook

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def _yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README, re.S)


def test_the_config_example_loads() -> None:
    blocks = [b for b in _yaml_blocks() if "targets:" in b]
    assert blocks, "the README shows a config file"
    for block in blocks:
        BotConfig.model_validate(yaml.safe_load(block))


def _is_runbook(block: str) -> bool:
    return block.startswith(("compensation:", "phases:"))


def test_the_setting_snippets_load() -> None:
    base = yaml.safe_load(next(b for b in _yaml_blocks() if "targets:" in b))
    for block in _yaml_blocks():
        if "targets:" not in block and not _is_runbook(block):
            BotConfig.model_validate({**base, **yaml.safe_load(block)})


def test_the_runbook_snippets_fit_the_default_runbook() -> None:
    blocks = [b for b in _yaml_blocks() if _is_runbook(b)]
    assert blocks, "the README shows the compensation section"
    base = yaml.safe_load(default_runbook_text())
    for block in blocks:
        parse_runbook(yaml.safe_dump({**base, **yaml.safe_load(block)}, allow_unicode=True), "README.md")


def test_every_target_setting_is_documented() -> None:
    from bot.core.targets import TargetSettings

    missing = [name for name in TargetSettings.model_fields if f"`{name}`" not in README]
    assert not missing, f"README does not document target settings {missing}"


def test_the_commands_it_shows_exist() -> None:
    [sub] = [a.choices for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for command in re.findall(r"rollback-bot (\w+)", README):
        assert command in sub, command
