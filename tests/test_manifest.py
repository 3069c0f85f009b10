"""manifest.yml validates against Slack's published manifest schema and asks for no more scopes than used.

The schema comes from ``../shared/slack-manifest-schema/`` beside the clone when
present, else from the vendored copy in ``tests/data/`` (MIT, see
``tests/data/slack-manifest-schema.LICENSE``). The top-level schema refers to the
versioned schemas by their GitHub URLs; those are resolved from the same folder,
never from the network.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from bot.slack.client import MANIFEST_BOT_SCOPES

ROOT = Path(__file__).resolve().parent.parent
SHARED_SCHEMA_DIR = ROOT.parent / "shared" / "slack-manifest-schema"
VENDORED_SCHEMA_DIR = Path(__file__).resolve().parent / "data"
TOP_SCHEMA = "slack-manifest.schema.json"

#: What ``rollback-bot check`` compares the installed app's scopes with.
EXPECTED_BOT_SCOPES = set(MANIFEST_BOT_SCOPES)


def schema_dir() -> Path:
    """The shared schema folder when CI has it beside the clone, else the vendored copy."""
    return SHARED_SCHEMA_DIR if (SHARED_SCHEMA_DIR / TOP_SCHEMA).is_file() else VENDORED_SCHEMA_DIR


def _remote_refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) and node["$ref"].startswith("http") else set()
        for value in node.values():
            found |= _remote_refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_remote_refs(v) for v in node)) if node else set()
    return set()


def manifest_validator(folder: Path) -> jsonschema.Draft7Validator:
    """A validator for the top-level schema with its versioned schemas loaded from ``folder``."""
    top = json.loads((folder / TOP_SCHEMA).read_text())
    resources = []
    for url in _remote_refs(top):
        local = folder / ("slack-" + url.rsplit("/", 1)[-1])
        resources.append((url, Resource.from_contents(json.loads(local.read_text()), default_specification=DRAFT7)))

    def no_network(uri: str) -> Resource[Any]:
        raise LookupError(f"schema {uri} is not available offline")

    registry: Registry[Any] = Registry(retrieve=no_network).with_resources(resources)  # type: ignore[call-arg]
    return jsonschema.Draft7Validator(top, registry=registry)


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    """manifest.yml as data."""
    return yaml.safe_load((ROOT / "manifest.yml").read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    """The manifest schema validator, offline."""
    return manifest_validator(schema_dir())


def test_manifest_validates_against_slack_schema(
    manifest: dict[str, Any], validator: jsonschema.Draft7Validator
) -> None:
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_schema_really_checks_something(manifest: dict[str, Any], validator: jsonschema.Draft7Validator) -> None:
    broken = copy.deepcopy(manifest)
    broken["features"]["slash_commands"][0]["command"] = "rollback"  # no leading slash
    assert not validator.is_valid(broken)
    broken = copy.deepcopy(manifest)
    broken["settings"]["no_such_setting"] = True
    assert not validator.is_valid(broken)


def test_bot_scopes_are_exactly_the_ones_used(manifest: dict[str, Any]) -> None:
    scopes = manifest["oauth_config"]["scopes"]["bot"]
    assert len(scopes) == len(set(scopes)), "a scope is listed twice"
    assert set(scopes) == EXPECTED_BOT_SCOPES
    assert "user" not in manifest["oauth_config"]["scopes"], "the bot needs no user scopes"


def test_command_interactivity_and_socket_mode(manifest: dict[str, Any]) -> None:
    assert manifest["display_information"]["name"] == "rollback-bot"
    assert manifest["features"]["bot_user"]["display_name"] == "rollback-bot"
    (command,) = manifest["features"]["slash_commands"]
    assert command["command"] == "/rollback"
    assert command["usage_hint"] == "start [target] [reason] | status [id] | abort [id] reason | help"
    assert command["should_escape"] is False
    assert command["description"]
    settings = manifest["settings"]
    assert settings["interactivity"] == {"is_enabled": True, "request_url": "https://example.com/slack/events"}
    assert settings["socket_mode_enabled"] is True
    assert settings["org_deploy_enabled"] is False
    assert settings["token_rotation_enabled"] is False


def test_vendored_schema_matches_shared() -> None:
    if not (SHARED_SCHEMA_DIR / TOP_SCHEMA).is_file():
        pytest.skip("no ../shared/slack-manifest-schema beside the clone")
    for name in (TOP_SCHEMA, "slack-manifest.schema.1.0.0.json", "slack-manifest.schema.2.0.0.json"):
        assert (VENDORED_SCHEMA_DIR / name).read_bytes() == (SHARED_SCHEMA_DIR / name).read_bytes(), name
    assert (VENDORED_SCHEMA_DIR / "slack-manifest-schema.LICENSE").read_bytes() == (
        SHARED_SCHEMA_DIR / "LICENSE"
    ).read_bytes()


def test_vendored_schema_alone_validates(manifest: dict[str, Any]) -> None:
    assert manifest_validator(VENDORED_SCHEMA_DIR).is_valid(manifest)
