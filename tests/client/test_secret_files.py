"""Every setting can be read from a file (`DEALFLOW_<SETTING>_FILE`), the way
compose `secrets:` and Kubernetes secret volumes hand secrets over; a file that
cannot be used stops a process with one line naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dealflow.codec import load_keyring
from dealflow.config import Settings, SettingsFileError
from tests.support.stack import ROOT

SECRET = "a-jwt-secret-read-from-a-file-0123456789abcdef"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("DEALFLOW_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_a_setting_comes_from_its_file_without_the_trailing_newline(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "jwt").write_text(SECRET + "\n")
    (tmp_path / "db").write_text("postgresql://dealflow:pw@postgres:5432/dealflow\n")
    clean_env.setenv("DEALFLOW_JWT_SECRET_FILE", str(tmp_path / "jwt"))
    clean_env.setenv("DEALFLOW_DATABASE_URL_FILE", str(tmp_path / "db"))
    settings = Settings()
    assert settings.jwt_secret == SECRET
    # The file's value goes through the setting's own validation.
    assert settings.database_url == "postgresql+psycopg://dealflow:pw@postgres:5432/dealflow"


def test_codec_keys_from_a_file_are_a_keyring(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    keys = tmp_path / "codec_keys"
    keys.write_text("# rotated 2026-12\nk2=" + "B" * 43 + "=\nk1=" + "A" * 43 + "=\n")
    clean_env.setenv("DEALFLOW_CODEC_KEYS_FILE", str(keys))
    assert load_keyring(Settings().codec_keys).key_ids == ["k2", "k1"]


def test_arguments_still_win_over_files(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "jwt").write_text(SECRET)
    clean_env.setenv("DEALFLOW_JWT_SECRET_FILE", str(tmp_path / "jwt"))
    assert Settings(jwt_secret="given").jwt_secret == "given"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "DEALFLOW_JWT_SECRET_FILE: cannot read {path}: No such file or directory"),
        ("  \n", "DEALFLOW_JWT_SECRET_FILE: {path} is empty"),
        (b"\xff\xfe", "DEALFLOW_JWT_SECRET_FILE: {path} is not UTF-8 text"),
    ],
)
def test_an_unusable_file_is_named(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    path = tmp_path / "jwt"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    clean_env.setenv("DEALFLOW_JWT_SECRET_FILE", str(path))
    with pytest.raises(SettingsFileError) as e:
        Settings()
    assert str(e.value) == message.format(path=path)


def test_the_variable_and_its_file_together_are_refused(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "jwt").write_text(SECRET)
    clean_env.setenv("DEALFLOW_JWT_SECRET_FILE", str(tmp_path / "jwt"))
    clean_env.setenv("DEALFLOW_JWT_SECRET", "inline")
    with pytest.raises(SettingsFileError) as e:
        Settings()
    assert str(e.value) == "set DEALFLOW_JWT_SECRET or DEALFLOW_JWT_SECRET_FILE, not both"


def test_a_process_stops_with_one_line_naming_the_file_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEALFLOW_", "TEMPORAL_"))}
    env["DEALFLOW_JWT_SECRET_FILE"] = str(tmp_path / "missing")
    proc = subprocess.run(
        [sys.executable, "-m", "dealflow.api"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == (
        f"api: configuration error: DEALFLOW_JWT_SECRET_FILE: cannot read {tmp_path / 'missing'}: "
        "No such file or directory"
    )


class WithPolicy(Settings):
    # A setting whose `_FILE` variable is already the name of another setting.
    policy: str = "standard"


def test_a_file_variable_that_is_a_setting_stays_that_setting(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("DEALFLOW_POLICY_FILE", str(tmp_path / "policy.json"))
    settings = WithPolicy()
    assert settings.policy_file == tmp_path / "policy.json"
    assert settings.policy == "standard"
