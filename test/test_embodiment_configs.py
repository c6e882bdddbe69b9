"""Embodiment configs: the shipped ones load; bad ones name the file, the key and the expectation."""

from pathlib import Path

import pytest
import yaml

from ki_vla_ros.configio import ConfigError
from ki_vla_ros.embodiment import load_embodiment

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (REPO / "config" / "embodiments").glob("*.yaml"))


def test_shipped_set():
    assert {"aloha_bimanual", "mobile_aloha"} <= set(SHIPPED)
    assert any(load_embodiment(n).action_dim <= 8 for n in SHIPPED), "no single-arm embodiment"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name):
    emb = load_embodiment(name)
    assert emb.name == name
    assert len(emb.action_names) == emb.action_dim and all(emb.action_names)


def test_aloha_topics_and_layout():
    emb = load_embodiment("aloha_bimanual")
    assert [(c.name, c.topic) for c in emb.cameras] == [
        ("cam_high", "/cam_high/image_raw"),
        ("cam_left_wrist", "/cam_left_wrist/image_raw"),
        ("cam_right_wrist", "/cam_right_wrist/image_raw"),
    ]
    assert [s.topic for s in emb.state] == ["/follower_left/joint_states", "/follower_right/joint_states"]
    arm = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper"]
    assert emb.action_names == [f"left_{j}" for j in arm] + [f"right_{j}" for j in arm]
    assert [(o.type, o.topic) for o in emb.outputs] == [
        ("joint_trajectory", "/left_arm_controller/joint_trajectory"),
        ("joint_trajectory", "/right_arm_controller/joint_trajectory"),
    ]
    assert emb.control_rate_hz == 50.0 and emb.model == "models/aloha_pick4"
    mobile = load_embodiment("mobile_aloha")
    assert mobile.action_dim == 16 and mobile.outputs[-1].topic == "/cmd_vel"
    assert mobile.action_names[14:] == ["base_linear_x", "base_angular_z"]


def _bad(tmp_path, mutate):
    data = yaml.safe_load((REPO / "config" / "embodiments" / "aloha_bimanual.yaml").read_text())
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_embodiment(str(path))
    assert str(path) in str(info.value)
    return str(info.value)


def test_bad_configs_name_file_key_and_expectation(tmp_path):
    msg = _bad(tmp_path, lambda d: d.update(control_rate_hz="fast"))
    assert "control_rate_hz" in msg and "number" in msg
    msg = _bad(tmp_path, lambda d: d["cameras"][1].update(message="jpeg"))
    assert "cameras[1].message" in msg and "compressed" in msg
    msg = _bad(tmp_path, lambda d: d["outputs"][0].update(action_slice=[0, 6]))
    assert "outputs[0].joints" in msg and "6" in msg
    msg = _bad(tmp_path, lambda d: d["limits"]["joints"]["left_elbow"].update(lower=3.0))
    assert "limits.joints.left_elbow.lower" in msg
    msg = _bad(tmp_path, lambda d: d["limits"]["joints"].pop("right_gripper"))
    assert "limits.joints" in msg and "right_gripper" in msg
    msg = _bad(tmp_path, lambda d: d.update(extra_key=1))
    assert "extra_key" in msg and "unknown" in msg
    msg = _bad(tmp_path, lambda d: d["outputs"][1].update(action_slice=[6, 13]))
    assert "outputs" in msg


def test_unknown_embodiment_name_lists_known():
    with pytest.raises(ConfigError, match="aloha_bimanual"):
        load_embodiment("no_such_robot")
