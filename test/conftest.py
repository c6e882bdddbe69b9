"""Shared fixtures: every test that touches ROS gets its own DDS domain, kept on this machine."""

import itertools
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_domains = itertools.count(1)


def _domain_base() -> int:
    # Spread parallel pytest runs (and leftovers) over different domains; valid ids are 0..101
    # with Fast DDS's default port mapping.
    return 1 + (os.getpid() % 5) * 20


@pytest.fixture
def ros_env(tmp_path, monkeypatch):
    """Environment for this test and the processes it starts: LOCALHOST discovery, a domain of
    its own, logs in a temporary ROS_HOME. Returns the env dict to pass to subprocesses."""
    domain = _domain_base() + next(_domains) % 20
    env = {
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": str(domain),
        "ROS_HOME": str(tmp_path / "ros_home"),
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    full = dict(os.environ)
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full.get("PYTHONPATH", "")]))
    full["PYTHONUNBUFFERED"] = "1"
    return full


@pytest.fixture
def python_exe() -> str:
    return sys.executable


_COPY_IGNORE = (".venv", ".git", "build", "install", "log", ".ros", "__pycache__", ".pytest_cache",
                ".ruff_cache", "*.egg-info", "runs", "outputs")
# top-level folders of generated files only (ki_vla_ros/data is code): a developer's data/ holds
# datasets and episode caches of tens of GB
_COPY_IGNORE_TOP = ("data",)


def _copy_ignore(directory: str, names: list[str]) -> set[str]:
    """shutil.copytree's ignore for a copy of this repository: build outputs anywhere, and the
    generated top-level folders."""
    ignored = shutil.ignore_patterns(*_COPY_IGNORE)(directory, names)
    if Path(directory).resolve() == REPO.resolve():
        ignored |= set(names) & set(_COPY_IGNORE_TOP)
    return ignored


@pytest.fixture(scope="session")
def colcon_install(tmp_path_factory):
    """`colcon build --merge-install` of a copy of this repository; returns the install prefix.

    Built once per test session; tests that need an installed package (ament index, launch files
    via FindPackageShare, lib/ki_vla_ros executables) share it."""
    import shutil
    import subprocess

    colcon = Path(sys.executable).with_name("colcon")
    if not colcon.exists():
        pytest.skip("colcon is not installed in this environment (requirements/dev.txt)")
    work = tmp_path_factory.mktemp("colcon")
    src = work / "src" / "ki_vla_ros"
    shutil.copytree(REPO, src, ignore=_copy_ignore)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(colcon.parent), env.get("PATH", "")])
    proc = subprocess.run(
        [str(colcon), "--log-base", str(work / "log"), "build", "--merge-install",
         "--base-paths", str(work / "src"), "--build-base", str(work / "build"),
         "--install-base", str(work / "install"), "--event-handlers", "console_direct-"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"colcon build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return work / "install"
