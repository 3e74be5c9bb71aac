"""The shipped deployment (compose/) says what the docs promise. Docker cannot run here, so
this checks the files themselves: topology, durability settings, health checks, secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mfm_dist.ui.server import BindRefused, check_binding, read_token_file
from support import REPO

COMPOSE = REPO / "compose"


def services() -> dict[str, Any]:
    data = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    found: dict[str, Any] = data["services"]
    return found


def test_topology_and_queues() -> None:
    svc = services()
    assert {"redis", "minio", "control", "submit", "attempts", "ui"} <= set(svc)
    control = " ".join(map(str, svc["control"]["command"]))
    attempts = " ".join(map(str, svc["attempts"]["command"]))
    assert "mfm.control" in control and "-c 1" in control.replace("--concurrency", "-c")
    assert "mfm.attempts" in attempts
    for worker in ("control", "submit", "attempts"):
        assert svc[worker]["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc[worker]["restart"] == "unless-stopped"


def test_redis_is_durable_and_never_evicts() -> None:
    command = " ".join(map(str, services()["redis"]["command"]))
    assert "appendonly yes" in command
    assert "appendfsync always" in command
    assert "maxmemory-policy noeviction" in command


def test_health_checks_and_no_password_on_command_lines() -> None:
    svc = services()
    assert "healthcheck" in svc["redis"] and "healthcheck" in svc["minio"]
    for name, service in svc.items():
        text = yaml.safe_dump(service)
        assert "change-me" not in text, name
        assert "--requirepass" not in text, name


def test_worker_image_installs_the_distributed_extras() -> None:
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    assert 'pip install ".[dist' in dockerfile
    assert "USER " in dockerfile  # workers do not run as root


def test_the_dashboard_is_served_with_a_token_from_a_secret(tmp_path: Path) -> None:
    """`ui` runs `mfm ui` on 0.0.0.0 (so the published port reaches it), which the server
    only allows with a token: read from the `ui_token` secret, never written in the file."""
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    ui = compose["services"]["ui"]
    command = [str(part) for part in ui["command"]]
    assert command[:2] == ["mfm", "ui"]
    options = dict(zip(command[2::2], command[3::2], strict=True))
    assert options["--host"] == "0.0.0.0"
    assert options["--token-file"] == "/run/secrets/ui_token"
    assert "--token" not in options and "MFM_UI_TOKEN" not in ui.get("environment", {})
    assert "ui_token" in ui["secrets"] and "redis_password" in ui["secrets"]
    assert compose["secrets"]["ui_token"] == {"environment": "UI_TOKEN"}
    assert ui["ports"] == [f"127.0.0.1:{options['--port']}:{options['--port']}"]
    assert ui["depends_on"]["redis"]["condition"] == "service_healthy"
    assert ui["environment"]["MFM_EVENTS_URL"].startswith("redis://")
    assert ui["environment"]["MFM_ARTIFACTS_URL"].startswith("s3://")
    probe = " ".join(map(str, ui["healthcheck"]["test"]))
    assert "/api/health" in probe and "/run/secrets/ui_token" in probe
    assert 'pip install ".[dist,io,ui]"' in (COMPOSE / "Dockerfile").read_text()
    # What the container's `mfm ui` decides with that command: refused without the secret's
    # token, served with one.
    with pytest.raises(BindRefused) as refused:
        check_binding(options["--host"], None)
    assert refused.value.code == "ui_token_required"
    secret = tmp_path / "ui_token"
    secret.write_text("f" * 48 + "\n")  # what `openssl rand -hex 24` makes, and a newline
    token = read_token_file(str(secret))
    assert token == "f" * 48
    check_binding(options["--host"], token)
