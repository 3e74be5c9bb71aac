"""The shipped deployment (compose/) says what the docs promise. Docker cannot run here, so
this checks the files themselves: topology, durability settings, health checks, secrets."""

from __future__ import annotations

from typing import Any

import yaml

from support import REPO

COMPOSE = REPO / "compose"


def services() -> dict[str, Any]:
    data = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    found: dict[str, Any] = data["services"]
    return found


def test_topology_and_queues() -> None:
    svc = services()
    assert {"redis", "minio", "control", "submit", "attempts"} <= set(svc)
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
