"""`ki-vla eval-bag`: a policy over a bag's observations, offline (no DDS, no rclpy needed)."""

import json
import sys

import numpy as np
import pytest
from ros_helpers import tiny_model_dir, write_aloha_bag

from ki_vla_ros.ros.cli_commands import eval_bag_main


@pytest.fixture(scope="module", params=["sqlite3", "mcap"])
def bag(tmp_path_factory, request):
    return write_aloha_bag(tmp_path_factory.mktemp("bag") / "rec", duration_s=2.0, commands=True,
                           storage=request.param)


def test_eval_bag_reports_error_against_recorded_commands(bag, tmp_path, capsys):
    out = tmp_path / "report.json"
    code = eval_bag_main(
        [
            str(bag),
            "--policy-class",
            "ros_helpers:ScriptedPolicy",
            "--instruction",
            "close it",
            "--max-samples",
            "4",
            "--stride",  # four samples fit the 2 s bag whatever the embodiment's execute_steps
            "0.5",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert report["samples"] == 4 and report["has_recorded_commands"]
    per = report["mae_per_action"]
    # recorded commands are all 0; the scripted policy moves the waist +0.04/step, aims the
    # left shoulder at 5.0 and closes the grippers (0.0): the errors are exactly these
    steps = report["compared_steps_per_sample"]
    assert per["left_waist"] == pytest.approx(np.mean(0.04 * np.arange(1, steps + 1)), abs=1e-6)
    assert per["left_shoulder"] == pytest.approx(5.0) and per["right_shoulder"] == pytest.approx(0.0)
    assert per["left_gripper"] == pytest.approx(0.0) and per["right_elbow"] == pytest.approx(0.0)
    assert report["latency_ms"]["p50"] >= 25.0  # the scripted policy sleeps 30 ms
    assert "MAE" in capsys.readouterr().out


@pytest.fixture(scope="module")
def sqlite_bag(tmp_path_factory):
    return write_aloha_bag(tmp_path_factory.mktemp("bag") / "rec", duration_s=1.0, commands=True)


def test_eval_bag_with_tiny_model_and_bad_inputs(sqlite_bag, tmp_path, capsys):
    bag = sqlite_bag
    model = tiny_model_dir(tmp_path / "tiny")
    assert (
        eval_bag_main(
            [
                str(bag),
                "--model",
                str(model),
                "--instruction",
                "pick up the red cube",
                "--max-samples",
                "2",
                "--num-steps",
                "2",
            ]
        )
        == 0
    )
    assert "latency ms" in capsys.readouterr().out
    assert eval_bag_main([str(tmp_path / "missing"), "--model", str(model), "--instruction", "x"]) == 1
    assert "not found" in capsys.readouterr().err
    assert (
        eval_bag_main(
            [
                str(bag),
                "--embodiment",
                "franka_single_arm",
                "--policy-class",
                "ros_helpers:ScriptedPolicy",
                "--instruction",
                "x",
            ]
        )
        == 1
    )
    assert "no messages" in capsys.readouterr().err


def test_eval_bag_modules_import_without_ros():
    import subprocess

    code = (
        "import sys; import ki_vla_ros.control.eval_bag, ki_vla_ros.bagio, ki_vla_ros.control, "
        "ki_vla_ros.embodiment; bad=[m for m in sys.modules if m.startswith(('rclpy','sensor_msgs'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_instruction_defaults_to_the_bags_own(sqlite_bag, tmp_path, capsys):
    from ki_vla_ros.bagio import first_string, typestore, write_bag

    String = typestore().types["std_msgs/msg/String"]
    recorded = write_bag(tmp_path / "with_instruction", [
        ("/chatter", "std_msgs/msg/String", 1, String(data="not this one")),
        ("/instruction", "std_msgs/msg/String", 2, String(data="pick up the blue cube")),
        ("/instruction", "std_msgs/msg/String", 3, String(data="a later one")),
    ])
    assert first_string(recorded) == "pick up the blue cube"
    assert first_string(sqlite_bag) is None
    # the ALOHA test bag has no /instruction: without --instruction the command says so
    assert eval_bag_main([str(sqlite_bag), "--policy-class", "ros_helpers:ScriptedPolicy"]) == 1
    assert "no /instruction message" in capsys.readouterr().err
