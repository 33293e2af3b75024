"""scripts/install-torch.sh: the torch choice the Makefile makes, driven through a stand-in interpreter.

The script only ever runs ``PY -m pip ...`` and ``PY -c <read torch's version>``; a small executable
that logs its arguments (and answers the version question from a file) shows which pip commands a real
venv would get, without installing several GB.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install-torch.sh"

FAKE_PY = """#!/usr/bin/env bash
here=$(dirname "$0")
echo "$*" >> "$here/../calls.log"
if [ "$1" = "-c" ]; then
  [ -f "$here/../torch-version" ] && cat "$here/../torch-version" && exit 0
  exit 1
fi
case "$*" in
  *"uninstall"*) rm -f "$here/../torch-version" ;;
  *"--index-url https://cpu.invalid"*) [ -n "${CPU_INDEX_DOWN:-}" ] && { echo "ERROR: could not reach" >&2; exit 1; }
                                       echo "2.13.0+cpu" > "$here/../torch-version" ;;
  *"install"*) echo "2.13.0" > "$here/../torch-version" ;;
esac
"""


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    (tmp_path / "bin").mkdir()
    py = tmp_path / "bin" / "python"
    py.write_text(FAKE_PY)
    py.chmod(0o755)
    return tmp_path


def _run(venv: Path, choice: str, **env: str) -> str:
    (venv / "calls.log").unlink(missing_ok=True)
    full = {**os.environ, "TORCH_CPU_INDEX": "https://cpu.invalid", **env}
    out = subprocess.run(["bash", str(SCRIPT), str(venv / "bin" / "python"), "2.13.0", choice],
                         capture_output=True, text=True, env=full, check=True)
    return out.stdout + (venv / "calls.log").read_text() if (venv / "calls.log").exists() else out.stdout


@pytest.mark.skipif(Path("/proc/driver/nvidia/version").exists(), reason="this machine has an NVIDIA GPU")
def test_auto_without_gpu_takes_the_cpu_index_and_a_second_run_does_nothing(venv: Path) -> None:
    log = _run(venv, "auto")
    assert "--index-url https://cpu.invalid torch==2.13.0" in log
    assert (venv / ".torch-choice").read_text().strip() == "cpu torch==2.13.0"
    again = _run(venv, "auto")
    assert "install" not in again  # the recorded choice is what is there: no pip call


def test_cpu_index_unreachable_falls_back_to_the_default_index(venv: Path) -> None:
    log = _run(venv, "cpu", CPU_INDEX_DOWN="1")
    assert "could not be used" in log and "using the default index" in log
    assert log.rstrip().splitlines()[-1].endswith("install -q torch==2.13.0")  # plain default-index install
    assert (venv / "torch-version").read_text().strip() == "2.13.0"


def test_changing_the_choice_later_replaces_torch(venv: Path) -> None:
    _run(venv, "cuda")
    assert (venv / "torch-version").read_text().strip() == "2.13.0"
    log = _run(venv, "cpu")
    assert "switching from 'cuda torch==2.13.0' to 'cpu torch==2.13.0'" in log
    assert "-m pip uninstall -q -y torch" in log  # pip alone would call the CUDA wheel "already satisfied"
    assert (venv / "torch-version").read_text().strip() == "2.13.0+cpu"


def test_keep_leaves_an_existing_torch(venv: Path) -> None:
    (venv / "torch-version").write_text("2.9.1\n")
    log = _run(venv, "keep")
    assert "torch 2.9.1 kept" in log and "install" not in log.replace("kept (TORCH=keep)", "")
