"""`colcon build` installs the package as ROS 2 expects: ament index, share files, executables."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_colcon_build_installs_share_and_scripts(colcon_install, monkeypatch):
    from ament_index_python.packages import get_package_prefix, get_package_share_directory

    monkeypatch.setenv("AMENT_PREFIX_PATH", str(colcon_install))
    share = Path(get_package_share_directory("ki_vla_ros"))
    assert share == colcon_install / "share" / "ki_vla_ros"
    assert (share / "package.xml").is_file()

    launch_files = sorted(p.name for p in (REPO / "launch").glob("*.launch.py"))
    assert launch_files, "the repository has no launch files"
    for name in launch_files:
        assert (share / "launch" / name).is_file(), f"launch/{name} not installed"
    configs = sorted(p.relative_to(REPO) for p in (REPO / "config").rglob("*.yaml"))
    assert configs, "the repository has no config files"
    for rel in configs:
        assert (share / rel).is_file(), f"{rel} not installed"

    # ros2 run / launch_ros look for executables in lib/<package>/
    libdir = Path(get_package_prefix("ki_vla_ros")) / "lib" / "ki_vla_ros"
    for exe in ("ki-vla", "policy_node"):
        path = libdir / exe
        assert path.is_file() and os.access(path, os.X_OK), f"{path} missing or not executable"


def test_repository_copy_leaves_generated_data_out(tmp_path, monkeypatch):
    """The colcon fixture's copy skips the top-level data/ (datasets and episode caches of tens of GB
    on a developer's machine) and build outputs, and keeps the ki_vla_ros/data package."""
    import conftest

    repo = tmp_path / "repo"
    for rel in ("data/pick4/cache/x.npy", "ki_vla_ros/data/robot.py", "runs/r/log.csv", "ki_vla_ros/__pycache__/a.pyc",
                "config/train/a.yaml"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("x")
    monkeypatch.setattr(conftest, "REPO", repo)
    conftest.shutil.copytree(repo, tmp_path / "copy", ignore=conftest._copy_ignore)
    copied = sorted(str(p.relative_to(tmp_path / "copy")) for p in (tmp_path / "copy").rglob("*") if p.is_file())
    assert copied == ["config/train/a.yaml", "ki_vla_ros/data/robot.py"]
