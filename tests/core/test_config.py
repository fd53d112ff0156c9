"""Settings: defaults < VITDEMO_* env vars < CLI flags; bad values are refused."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from vitdemo.config import Settings, add_arguments
from vitdemo.errors import InputError


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_are_safe() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, s.quant, s.device, s.trust_remote_code) == ("127.0.0.1", 7860, "auto", "auto", False)
    assert s.model is None and s.auth_pair is None
    assert s.home.name == "vitdemo"


def test_env_then_flags_override(tmp_path: Path) -> None:
    env = {"VITDEMO_PORT": "9000", "VITDEMO_QUANT": "8bit", "VITDEMO_TRUST_REMOTE_CODE": "yes",
           "VITDEMO_HOME": str(tmp_path), "VITDEMO_MODEL": "env/model"}
    s = Settings.from_args(_parse(["--port", "9100", "--model", "flag/model"]), env)
    assert s.port == 9100 and s.model == "flag/model"  # flags win
    assert s.quant == "8bit" and s.trust_remote_code is True and s.home == tmp_path  # env kept
    s2 = Settings.from_args(_parse(["--trust-remote-code", "--auth", "ann:pw"]), {})
    assert s2.trust_remote_code is True and s2.auth_pair == ("ann", "pw")


@pytest.mark.parametrize("env", [
    {"VITDEMO_PORT": "eighty"}, {"VITDEMO_QUANT": "3bit"}, {"VITDEMO_TRUST_REMOTE_CODE": "maybe"},
    {"VITDEMO_MAX_NEW_TOKENS": "5000"}, {"VITDEMO_CONCURRENCY": "0"}, {"VITDEMO_AUTH": "nopassword"},
])
def test_bad_env_values_are_input_errors(env: dict[str, str]) -> None:
    with pytest.raises(InputError):
        Settings.from_env(env)


def test_max_records_is_a_setting_that_reaches_the_data_check() -> None:
    """The Fine-tune page's record limit comes from Settings (env var and flag), not a hidden default."""
    from types import SimpleNamespace

    from vitdemo.finetune import service

    assert Settings.from_env({}).max_records == 5000
    settings = Settings.from_args(_parse(["--max-records", "30"]), {"VITDEMO_MAX_RECORDS": "12"})
    assert settings.max_records == 30
    assert Settings.from_env({"VITDEMO_MAX_RECORDS": "12"}).max_records == 12
    with pytest.raises(InputError, match="max_records"):
        Settings(max_records=0)
    engine = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512)))
    assert service._limits(engine, settings).parse.max_records == 30
