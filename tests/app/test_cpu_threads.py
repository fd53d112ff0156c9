"""Torch's OpenMP workers sleep between operations in the server (vitdemo.serving.cpu_threads)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from webapp import free_port

from vitdemo.serving.cpu_threads import prefer_sleeping_cpu_workers

ROOT = Path(__file__).resolve().parents[2]


def test_sets_the_passive_policy_when_the_user_chose_none() -> None:
    environ: dict[str, str] = {}
    assert prefer_sleeping_cpu_workers(environ) is True
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}


def test_keeps_the_users_policy() -> None:
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert prefer_sleeping_cpu_workers(environ) is False
    assert environ == {"OMP_WAIT_POLICY": "ACTIVE"}


SERVER_COMMANDS = {"app.py": ["app.py"], "vitdemo serve": ["-m", "vitdemo", "serve"]}


def _openmp_spin_count(command: list[str], extra_env: dict[str, str], tmp_path: Path) -> str:
    """Start the server as a user does (with a model that is missing, so it stops after
    torch has loaded OpenMP) and read the spin count GNU OpenMP reports at its start."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    env.update(extra_env, OMP_DISPLAY_ENV="VERBOSE", VITDEMO_HOME=str(tmp_path / "home"), VITDEMO_HOST="127.0.0.1")
    done = subprocess.run([sys.executable, *command, "--model", str(tmp_path / "missing"), "--port", str(free_port())],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "does not exist" in done.stderr  # it got as far as loading the model
    if "OPENMP DISPLAY ENVIRONMENT" not in done.stderr:
        pytest.skip("torch's OpenMP here does not describe itself (not GNU OpenMP)")
    lines = [line for line in done.stderr.splitlines() if "GOMP_SPINCOUNT" in line]
    assert lines, done.stderr[-2000:]
    return lines[0].split("=", 1)[1].strip().strip("'")


@pytest.mark.parametrize("entry", SERVER_COMMANDS)
def test_the_server_process_starts_openmp_without_spinning(entry: str, tmp_path: Path) -> None:
    # GNU OpenMP's default spins 300000 times after each operation; PASSIVE makes it 0.
    assert _openmp_spin_count(SERVER_COMMANDS[entry], {}, tmp_path) == "0"


def test_the_users_policy_stands_in_the_server(tmp_path: Path) -> None:
    assert _openmp_spin_count(SERVER_COMMANDS["app.py"], {"OMP_WAIT_POLICY": "ACTIVE"}, tmp_path) != "0"
