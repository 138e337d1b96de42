"""In production no process starts on a public development value (dealflow/production.py)."""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dealflow.codec import DEV_KEY_SPEC
from dealflow.config import DEV_JWT_SECRET, ROOT, Settings
from dealflow.production import DEVELOPMENT_WEBHOOK_SECRETS, production_problems

STRONG = "s" * 40


def _webhook_secret(size: int = 32) -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(size)).decode()


def _lenders_file(tmp_path: Path, secret: str, name: str = "lenders.toml") -> Path:
    path = tmp_path / name
    path.write_text(
        "[[lenders]]\n"
        'id = "acme-auto-finance"\n'
        'legal_name = "Acme Auto Finance Co., Ltd."\n'
        'api_base_url = "https://lender.example/acme"\n'
        f'webhook_secret = "{secret}"\n',
        encoding="utf-8",
    )
    return path


def _codec_keys(size: int = 32) -> str:
    return "prod-1=" + base64.b64encode(secrets.token_bytes(size)).decode()


def _safe(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "production",
        "jwt_secret": STRONG,
        "file_link_secret": "f" * 40,
        "codec_keys": _codec_keys(),
        "lenders_file": _lenders_file(tmp_path, _webhook_secret()),
        "api_host": "0.0.0.0",
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def test_development_is_the_default_and_checks_nothing() -> None:
    settings = Settings()
    assert settings.env == "development"
    assert production_problems(settings) == []


def test_a_production_deployment_with_its_own_secrets_starts(tmp_path: Path) -> None:
    assert production_problems(_safe(tmp_path)) == []


def test_production_on_the_defaults_names_every_unsafe_setting() -> None:
    problems = production_problems(Settings(env="production", api_host="0.0.0.0", codec_keys=""))
    text = "\n".join(problems)
    for name in (
        "DEALFLOW_JWT_SECRET is the public development value",
        "DEALFLOW_FILE_LINK_SECRET is the public development value",
        "DEALFLOW_CODEC_KEYS is not set",
        "DEALFLOW_LENDERS_FILE is not set",
        "DEALFLOW_API_HOST is 0.0.0.0, not loopback, while the desk's development sign-in",
    ):
        assert name in text
    assert len(problems) == 5
    assert DEV_JWT_SECRET not in text


def test_short_secrets_are_refused(tmp_path: Path) -> None:
    problems = production_problems(
        _safe(
            tmp_path,
            jwt_secret="x" * 31,
            file_link_secret="y" * 12,
            codec_keys=_codec_keys(16),
            lenders_file=_lenders_file(tmp_path, _webhook_secret(24), "weak.toml"),
        )
    )
    assert problems == [
        "DEALFLOW_JWT_SECRET is shorter than 32 bytes",
        "DEALFLOW_FILE_LINK_SECRET is shorter than 32 bytes",
        "DEALFLOW_CODEC_KEYS: key 'prod-1' has 16 bytes; use 32",
        f"DEALFLOW_LENDERS_FILE ({tmp_path / 'weak.toml'}), lender 'acme-auto-finance': "
        "webhook_secret is shorter than 32 bytes",
    ]


def test_the_development_codec_key_is_refused_even_beside_a_real_one(tmp_path: Path) -> None:
    dev_key = DEV_KEY_SPEC.split("=", 1)[1]
    problems = production_problems(_safe(tmp_path, codec_keys=f"{_codec_keys()},old={dev_key}"))
    assert problems == ["DEALFLOW_CODEC_KEYS: key 'old' is the public development key"]


def test_the_example_lenders_file_is_refused_in_production() -> None:
    problems = production_problems(
        Settings(
            env="production",
            jwt_secret=STRONG,
            file_link_secret=STRONG,
            codec_keys=_codec_keys(),
            lenders_file=ROOT / "examples" / "lenders.toml",
        )
    )
    assert len(problems) == 3
    assert all("webhook_secret is a public development value" in p for p in problems)


def test_the_known_development_webhook_secrets_are_those_of_the_example_file() -> None:
    example = tomllib.loads((ROOT / "examples" / "lenders.toml").read_text(encoding="utf-8"))
    assert {lender["webhook_secret"] for lender in example["lenders"]} == set(
        DEVELOPMENT_WEBHOOK_SECRETS
    )


def test_loopback_api_may_keep_the_development_sign_in_but_not_its_secret(tmp_path: Path) -> None:
    problems = production_problems(_safe(tmp_path, jwt_secret=DEV_JWT_SECRET, api_host="::1"))
    assert problems == [
        "DEALFLOW_JWT_SECRET is the public development value; set a secret of your own"
    ]


PROCESSES = {
    "worker": [sys.executable, str(ROOT / "worker.py")],
    "api": [sys.executable, "-m", "dealflow.api"],
    "dealflow.storage.db": [sys.executable, "-m", "dealflow.storage.db", "upgrade"],
    "dealflow-audit verify": [sys.executable, "-m", "dealflow.audit", "verify"],
    "create-bucket": [sys.executable, "-m", "dealflow.storage.documents", "create-bucket"],
    "starter": [sys.executable, str(ROOT / "starter.py"), "list"],
}


@pytest.mark.parametrize("program", sorted(PROCESSES))
def test_every_process_refuses_to_start_in_production_on_development_values(
    program: str, tmp_path: Path
) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DEALFLOW_", "TEMPORAL_"))
    }
    env |= {
        "DEALFLOW_ENV": "production",
        "DEALFLOW_DATA_DIR": str(tmp_path),
        "DEALFLOW_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
        # Nothing listens there: a process that got past the check would wait for it.
        "DEALFLOW_TEMPORAL_ADDRESS": "127.0.0.1:9",
        "DEALFLOW_TEMPORAL_CONNECT_TIMEOUT": "0",
    }
    done = subprocess.run(
        PROCESSES[program], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    refusals = [
        line for line in done.stderr.splitlines() if "refusing to start in production:" in line
    ]
    named = " ".join(refusals)
    for setting in (
        "DEALFLOW_JWT_SECRET",
        "DEALFLOW_FILE_LINK_SECRET",
        "DEALFLOW_CODEC_KEYS",
        "DEALFLOW_LENDERS_FILE",
    ):
        assert setting in named, done.stderr
    assert "Traceback" not in done.stderr
    assert DEV_JWT_SECRET not in done.stderr
    assert not (tmp_path / "db.sqlite").exists()
