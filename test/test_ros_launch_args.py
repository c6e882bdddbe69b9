"""Launch files a user can read, and launch testing that degrades to a clear skip.

What `ros2 launch ki_vla_ros FILE -s` prints is `LaunchDescription.get_launch_arguments()`: the
arguments a file declares, itself or in the files it includes. Through that API (ros2cli is not
installed here), from this checkout: every argument has a description, arguments with a fixed
set of values list them as choices, and every shipped embodiment has a launch file.
"""

import re
import subprocess
import sys

import pytest
from ros_helpers import HERE, REPO, launch_missing

from ki_vla_ros.control.policy_loader import BACKENDS

LAUNCH = REPO / "launch"
ROBOT_FILES = {"bimanual.launch.py": "aloha_bimanual", "mobile_bimanual.launch.py": "mobile_aloha",
               "single_arm.launch.py": "franka_single_arm"}
BOOLEANS = ("use_sim_time", "autostart", "activate")


def _arguments(name: str) -> dict:
    if reason := launch_missing():
        pytest.skip(reason)
    from launch.launch_description_sources import get_launch_description_from_python_launch_file

    ld = get_launch_description_from_python_launch_file(str(LAUNCH / name))
    return {a.name: a for a in ld.get_launch_arguments()}


@pytest.mark.parametrize("name", sorted(p.name for p in LAUNCH.glob("*.launch.py")))
def test_every_argument_is_described_with_its_choices(name):
    args = _arguments(name)
    for a in args.values():
        assert a.description and a.description != "no description given", (name, a.name)
    # the policy node's arguments reach every file (robot files include policy.launch.py)
    assert {"model", "backend", "policy_class", "instruction", "autostart", "activate", "params_file"} <= set(args)
    assert args["backend"].choices == list(BACKENDS)  # what load_policy takes, "auto" included
    assert f"Valid choices are: {list(BACKENDS)}" in args["backend"].description
    for b in BOOLEANS:
        assert set(args[b].choices) <= {"true", "false"}, (name, b, args[b].choices)
    assert "lifecycle" in args["activate"].description


def test_every_shipped_embodiment_has_a_launch_file():
    defaults = {name: _arguments(name)["embodiment"].default_value[0].text for name in ROBOT_FILES}
    assert defaults == ROBOT_FILES
    shipped = {p.stem for p in (REPO / "config" / "embodiments").glob("*.yaml")}
    assert shipped == set(defaults.values()), shipped


def test_sim_demo_task_choices_are_the_sim_tasks():
    from ki_vla_ros.sim.tasks import TASK_NAMES

    args = _arguments("sim_demo.launch.py")
    assert args["task"].choices == list(TASK_NAMES)
    assert args["embodiment"].choices == ["aloha_bimanual"] and args["use_sim_time"].choices == ["true"]


# Without ../shared (a fresh clone elsewhere) there are no launch wheels: setup says so, and the
# launch-file tests skip with the reason instead of failing.

LAUNCH_TESTS = ["test_ros_launch.py", "test_sim_node_launch.py", "test_ros_launch_args.py"]


def test_launch_tests_skip_without_launch(tmp_path):
    # `launch` / `launch_ros` made unimportable, as on a machine where they were never installed
    code = ("import sys; sys.modules['launch'] = sys.modules['launch_ros'] = None; import pytest; "
            "sys.exit(pytest.main(sys.argv[1:]))")
    proc = subprocess.run(
        # (their pytest plugins, installed with them, would not be there either)
        [sys.executable, "-c", code, "-q", "-rs", "-p", "no:cacheprovider", "-p", "no:launch_testing",
         "-p", "no:launch_ros", "--basetemp", str(tmp_path / "pt"),
         "-k", "not without_launch and not without_shared", *[str(HERE / f) for f in LAUNCH_TESTS]],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert " passed" not in out and "failed" not in out and "error" not in out.lower(), out[-3000:]
    skips = [x for x in out.splitlines() if x.startswith("SKIPPED")]
    assert sum(int(re.match(r"SKIPPED \[(\d+)\]", x).group(1)) for x in skips) >= len(LAUNCH_TESTS), out[-3000:]
    assert all("../shared/wheels/ros2-launch" in x for x in skips), out[-3000:]  # where the wheels come from


def test_setup_without_shared_folder_installs_nothing_and_says_so(tmp_path):
    missing = tmp_path / "shared" / "wheels" / "ros2-launch"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "install_launch_wheels.sh"), "/nonexistent/python",
                           str(missing)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert str(missing) in proc.stderr and "tests will be skipped" in proc.stderr
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert 'install_launch_wheels.sh "$venv/bin/python" "$launch_wheels"' in setup
    assert 'launch_wheels="$root/../shared/wheels/ros2-launch"' in setup
