"""The `ki-vla` command: every subcommand resolves to a real function; init-model + export work."""

import importlib
import json
import subprocess
import sys

import pytest

from ki_vla_ros.cli import SUBCOMMANDS, main


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_targets_exist(name):
    module_name, func_name = SUBCOMMANDS[name][0].split(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, func_name)), f"{name}: {module_name}.{func_name} is missing"


def test_unknown_command_and_help(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUBCOMMANDS)


def test_init_model_then_export_from_the_command_line(tmp_path):
    out = tmp_path / "m"
    cmd = [sys.executable, "-m", "ki_vla_ros.cli"]
    proc = subprocess.run([*cmd, "init-model", str(out), "--embodiment", "mobile_aloha"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    from ki_vla_ros.runtime import load_model_dir

    bundle = load_model_dir(out)
    assert bundle.layout.action_names[-2:] == ["base_linear_x", "base_angular_z"]
    assert len(bundle.layout.camera_names) == 3 and len(bundle.layout.state_names) == 14
    proc = subprocess.run([*cmd, "export", "--model", str(out), "--num-steps", "4"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["num_steps"] == 4
    assert (out / "onnx" / "flow_loop.onnx").is_file() and (out / "onnx" / "prefix.onnx").is_file()
