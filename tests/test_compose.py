"""deploy/compose.yml and deploy/bot.yml stay in step with the replicas the HA tests run."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
import yaml

from bot.core.config import BotConfig
from tests.ha_cluster import Cluster
from tests.slack_fake import SlackFake

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_the_compose_file_runs_postgresql_and_two_identical_replicas() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yml").read_text())
    services = compose["services"]
    replicas = [name for name in services if name != "postgres"]
    assert "postgres" in services and len(replicas) == 2
    first = services[replicas[0]]
    assert all(services[name] == first for name in replicas)  # one definition, two replicas
    env = first["environment"]
    # The database's password and the replicas' come from one variable, never from a file.
    assert "ROLLBACK_BOT_DB_PASSWORD" in env
    assert "ROLLBACK_BOT_DB_PASSWORD" in services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    assert any(v.startswith("./bot.yml:") for v in first["volumes"])
    config = BotConfig.model_validate(yaml.safe_load((DEPLOY / "bot.yml").read_text()))
    url = sa.make_url(config.state_db)
    assert url.drivername == "postgresql+asyncpg" and url.host == "postgres" and url.password is None
    user = services["postgres"]["environment"]["POSTGRES_USER"]
    assert url.username == user and url.database == services["postgres"]["environment"]["POSTGRES_DB"]


def test_the_ha_tests_run_the_compose_configuration(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yml").read_text())
    replica = next(s for n, s in compose["services"].items() if n != "postgres")
    deployed = yaml.safe_load((DEPLOY / "bot.yml").read_text())
    fake = SlackFake()
    cluster = Cluster.make(tmp_path, fake, "postgresql+asyncpg://rollback@127.0.0.1:5432/t", "pw",
                           runbook="name: x\nphases: []\n", workdir=tmp_path, target={"transport": "local"}, n=2)
    tested = yaml.safe_load(cluster.replicas[0].config.read_text())
    # The same kind of database URL (no password in it), the same lease settings' keys ...
    assert sa.make_url(tested["state_db"]).drivername == sa.make_url(deployed["state_db"]).drivername
    assert sa.make_url(tested["state_db"]).password is None
    assert set(tested["replicas"]) == set(deployed["replicas"])
    # ... and the environment the tests give each replica is the one compose gives it.
    env = cluster.env()
    for name in ("ROLLBACK_BOT_DB_PASSWORD", "SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"):
        assert name in env and name in replica["environment"]
    # Replicas differ only in where they listen and keep their files.
    other = yaml.safe_load(cluster.replicas[1].config.read_text())
    differs = {k for k in tested if tested[k] != other[k]}
    assert differs == {"slack", "artifacts_dir"}
    assert {k for k in tested["slack"] if tested["slack"][k] != other["slack"][k]} == {"http_port"}
