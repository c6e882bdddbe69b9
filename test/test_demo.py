"""`ki-vla demo` / `ki-vla eval` end to end: sim node + policy node processes with a tiny
random-weight model, over real DDS, short sim-time limits."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ki_vla_ros.ros.demo import DemoError, EpisodeResult, eval_main, format_table, resolve_model, summarize

pytest.importorskip("rclpy")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from ros_helpers import tiny_model_dir

    from ki_vla_ros.sim.aloha import JOINT_NAMES

    path = tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny")
    text = (path / "model.yaml").read_text()  # the aloha layout: 3 cameras, 14 joint names
    assert all(n in text for n in ("cam_high", "cam_left_wrist", "cam_right_wrist", *JOINT_NAMES))
    return path


def _run(args, env, timeout=240):
    return subprocess.run([sys.executable, "-m", "ki_vla_ros.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_default_model_resolves_and_missing_model_explains_how_to_make_one(tmp_path, monkeypatch):
    from ki_vla_ros.runtime.model_dir import load_manifest

    default = resolve_model("")  # the bundled models/aloha_pick4
    assert default.name == "aloha_pick4" and load_manifest(default).layout.camera_names[0] == "cam_high"
    with pytest.raises(DemoError, match="not a model folder"):
        resolve_model(str(tmp_path))
    import ki_vla_ros.embodiment as embodiment

    monkeypatch.setattr(embodiment, "resolve_model_dir", lambda model, emb: tmp_path / "gone")
    with pytest.raises(DemoError) as info:
        resolve_model("")
    assert "ki-vla init-model" in str(info.value) and "--model" in str(info.value)


def test_child_process_runs_at_the_given_nice_increment(tmp_path):
    """The demo's stand-in robot yields the CPU to the policy node (`--sim-nice`)."""
    from ki_vla_ros.ros.demo import Child

    code = "import os; print(os.nice(0))"
    for nice in (0, 7):
        child = Child("probe", [sys.executable, "-c", code], dict(os.environ), tmp_path / f"{nice}.log", nice=nice)
        child.popen.wait(30)
        child.stop()
        assert int((tmp_path / f"{nice}.log").read_text()) == os.nice(0) + nice


def test_backend_auto_is_checked_openvino_int8_or_onnxruntime_and_torch_for_a_policy_class(tiny_model, tmp_path):
    import argparse

    from ki_vla_ros.ros.demo import _common_args, _rig

    ap = argparse.ArgumentParser()
    _common_args(ap)
    cls = "ki_vla_ros.runtime.fast_policy:FastTokenPolicy"  # decodes on torch only
    rig = _rig(ap.parse_args(["--model", str(tiny_model), "--policy-class", cls]), tmp_path, record_video=False)
    assert rig.backend == "torch" and rig.policy_class == cls and rig.sim_nice == 5
    rig = _rig(ap.parse_args(["--model", str(tiny_model), "--backend", "torch", "--sim-nice", "0"]), tmp_path, False)
    assert rig.backend == "torch" and rig.sim_nice == 0
    with pytest.raises(SystemExit):
        ap.parse_args(["--sim-nice", "-3"])
    model = tmp_path / "m"  # a copy: the module's folder stays unexported for the demo test
    shutil.copytree(tiny_model, model, ignore=shutil.ignore_patterns("onnx"))
    rig = _rig(ap.parse_args(["--model", str(model)]), tmp_path, False)  # no precision checked
    assert (rig.backend, rig.precision) == ("onnxruntime", "fp32")
    assert (model / "onnx" / "export.json").is_file()
    # once OpenVINO int8 has passed its check on this folder, auto runs it; an explicit fp32 runs
    # ONNX Runtime
    from ki_vla_ros.export.cli import export_model_dir

    assert export_model_dir(model, precisions=("fp32", "int8"))["checks"]["openvino/int8"]["ok"]
    rig = _rig(ap.parse_args(["--model", str(model)]), tmp_path, False)
    assert (rig.backend, rig.precision) == ("openvino", "int8")
    rig = _rig(ap.parse_args(["--model", str(model), "--precision", "fp32"]), tmp_path, False)
    assert (rig.backend, rig.precision) == ("onnxruntime", "fp32")


def test_summary_per_task_per_instruction_and_overall():
    def ep(task, seed, ok, followed, said="x", reach=None, lift=None, other=None):
        return EpisodeResult(task, said, seed, ok, followed, 1.0, 1.0, 1, 2, None, None, None, None, 1.0, 0.1, 0.0, 0,
                             reach_m=reach, lift_m=lift, reach_other_m=other)

    s = summarize([ep("a", 0, True, True, "grab it", 0.01, 0.10, 0.2),
                   ep("a", 1, False, True, "lift it", 0.05, 0.0, 0.3),
                   ep("a", 2, True, False, "grab it", 0.02, 0.09, 0.1), ep("b", 0, False, False)])
    assert s["overall"]["episodes"] == 4 and s["overall"]["success_rate"] == 0.5
    assert s["overall"]["instruction_following_rate"] == 0.5 and s["overall"]["seeds"] == [0, 1, 2]
    a = s["per_task"]["a"]
    assert a["success_rate"] == pytest.approx(2 / 3) and a["instruction_following_rate"] == pytest.approx(2 / 3)
    assert a["instructions"] == ["grab it", "lift it"] and s["per_task"]["b"]["instructions"] == ["x"]
    grab, lift = s["per_instruction"]["a"]["grab it"], s["per_instruction"]["a"]["lift it"]
    assert (grab["episodes"], grab["success_rate"], grab["instruction_following_rate"]) == (2, 1.0, 0.5)
    assert grab["seeds"] == [0, 2]
    assert (lift["episodes"], lift["success_rate"], lift["instruction_following_rate"]) == (1, 0.0, 1.0)
    # graded progress: medians over the episodes that report it (task b's sim reported none)
    assert a["median_reach_m"] == pytest.approx(0.02) and a["median_lift_m"] == pytest.approx(0.09)
    assert grab["median_reach_m"] == pytest.approx(0.015) and s["overall"]["median_lift_m"] == pytest.approx(0.09)
    assert s["per_task"]["b"]["median_reach_m"] is None and s["per_task"]["b"]["median_lift_m"] is None
    lines = format_table(s).splitlines()
    assert a["median_reach_other_m"] == pytest.approx(0.2) and grab["median_reach_other_m"] == pytest.approx(0.15)
    assert lines[1].split() == ["a", "3", "67%", "67%", "2.0cm", "9.0cm", "20.0cm", "1.00"]
    assert lines[2].split()[:7] == ["2", "100%", "50%", "1.5cm", "9.5cm", "15.0cm", "1.00"]
    assert lines[2].endswith("'grab it'")
    assert lines[4].split()[4:7] == ["n/a", "n/a", "n/a"]
    assert lines[3].endswith("'lift it'") and lines[4].split()[0] == "b" and lines[5].split()[:3] == ["all", "4", "50%"]
    assert len(lines) == 6  # b has one instruction: no extra row
    assert summarize([]) == {"overall": {}, "per_task": {}, "per_instruction": {}}


@pytest.mark.dds
@pytest.mark.slow
def test_demo_runs_an_episode_and_saves_video_and_plot(tiny_model, ros_env, tmp_path):
    out = tmp_path / "demo"
    proc = _run(["demo", "--model", str(tiny_model), "--task", "pick_blue_right", "--seed", "3",
                 "--duration", "1.5", "--image-size", "96", "--out", str(out)], ros_env)
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs + "".join((out / "logs" / f).read_text()[-2000:]
                                                for f in ("sim_node.log", "policy_node.log"))
    for field in ("task:", "instruction:", "success:", "instruction followed:", "sim time:",
                  "control latency:", "chunks:", "progress:"):
        assert field in proc.stdout, logs
    assert "pick up the blue cube with the right arm" in proc.stdout
    # with no precision checked the default backend is ONNX Runtime fp32: the folder had no export,
    # so the demo made it first
    assert f"exported {tiny_model / 'onnx'}" in proc.stdout and (tiny_model / "onnx" / "export.json").is_file()
    assert "backend onnxruntime, precision fp32" in proc.stdout
    assert (out / "episode.mp4").stat().st_size > 1000 or (out / "episode.png").is_file()
    assert (out / "joints.png").stat().st_size > 1000
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "pick_blue_right" and report["seed"] == 3
    assert report["sim_time_s"] == pytest.approx(1.5, abs=0.03)
    assert report["chunks"] >= 1 and report["trajectories_executed"] >= 2, report
    assert report["max_joint_motion"] > 0.01, report  # the trajectories moved the joints
    # the recorder drains its queues in batches: nothing lost — a command (with its joint states) per
    # 50 Hz sim step and a frame per camera period (default every 2nd step) of the 1.5 s episode (the
    # recording runs on until the episode's end is reported: a few steps more)
    assert 74 <= report["recorded"]["commands"] <= 100, report["recorded"]
    assert 37 <= report["recorded"]["frames"] <= 50, report["recorded"]
    assert report["inference_ms_p50"] is not None
    assert report["exit_codes"] == {"policy_node": 0, "sim_node": 0}, report
    assert report["backend"] == "onnxruntime"


@pytest.mark.dds
@pytest.mark.slow
def test_eval_two_tasks_table_json_csv(tiny_model, ros_env, tmp_path):
    out = tmp_path / "eval"
    said = ["grab the red block with the left hand", "could you lift the red cube with the left gripper?"]
    (tmp_path / "instr.json").write_text(json.dumps({"pick_red_left": said}))
    proc = _run(["eval", "--model", str(tiny_model), "--tasks", "pick_red_left,handover_blue_right_to_left",
                 "--instructions", str(tmp_path / "instr.json"),
                 "--episodes", "3", "--seed", "5", "--duration", "0.5", "--image-size", "64",
                 "--camera-every", "2", "--out", str(out)], ros_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "success" in proc.stdout and "handover_blue_right_to_left" in proc.stdout
    res = json.loads((out / "results.json").read_text())
    assert [e["seed"] for e in res["episodes"]] == [5, 6, 7, 5, 6, 7]
    handover = "hand the blue cube from the right arm to the left arm"
    assert [e["instruction"] for e in res["episodes"]] == [*said, said[0], handover, handover, handover]
    assert res["meta"]["instructions"] == {"pick_red_left": said, "handover_blue_right_to_left": [handover]}
    # what the figures depend on is recorded with them
    assert res["meta"]["real_time_factor"] == 1.0 and res["meta"]["camera_every"] == 2
    assert res["meta"]["execute_steps"] == 40  # config/embodiments/aloha_bimanual.yaml
    assert res["per_task"]["pick_red_left"]["episodes"] == 3 and res["overall"]["episodes"] == 6
    assert [v["episodes"] for v in res["per_instruction"]["pick_red_left"].values()] == [2, 1]
    for key in ("success_rate", "instruction_following_rate"):
        assert 0 <= res["overall"][key] <= 1 and key in res["per_task"]["handover_blue_right_to_left"]
    for e in res["episodes"]:
        assert e["sim_time_s"] == pytest.approx(0.5, abs=0.03)
        # graded progress came over DDS from the sim: a real distance (the arms start ~0.3 m from
        # the cubes) and no lift in half a second of an untrained policy
        assert 0.05 < e["reach_m"] < 0.8 and abs(e["lift_m"]) < 0.01 and 0.05 < e["reach_other_m"] < 0.8, e
    assert res["overall"]["median_reach_m"] == pytest.approx(float(np.median([e["reach_m"] for e in res["episodes"]])))
    assert len((out / "results.csv").read_text().strip().splitlines()) == 7


def test_eval_rejects_unknown_task():
    proc = subprocess.run([sys.executable, "-m", "ki_vla_ros.cli", "eval", "--tasks", "fly"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "unknown tasks" in proc.stderr


def test_eval_rejects_a_bad_instructions_file_before_starting_anything(tmp_path):
    bad = tmp_path / "instr.json"
    bad.write_text('{"pick_red_left": ["grab it"], "fly": ["go"]}')
    with pytest.raises(SystemExit) as info:
        eval_main(["--instructions", str(bad), "--out", str(tmp_path / "out")])
    assert info.value.code == 2 and not (tmp_path / "out").exists()
    proc = subprocess.run([sys.executable, "-m", "ki_vla_ros.cli", "eval", "--instructions", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and f"--instructions {bad}: unknown task 'fly'" in proc.stderr
