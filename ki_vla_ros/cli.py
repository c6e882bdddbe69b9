"""The `ki-vla` command: one entry point, one subcommand per job.

Each subcommand lives in the module that owns the job and is imported only when used, so
`ki-vla export` works on a GPU cluster without ROS and `ki-vla run` without a training stack.
"""

from __future__ import annotations

import importlib
import sys

from ki_vla_ros.data.errors import DatasetError

# name -> ("module:function", one-line help). The function takes argv (list[str]) and returns
# an exit code (or None for 0).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ki_vla_ros.ros.demo:demo_main", "the main job: simulated ALOHA + policy node, one episode"),
    "eval": ("ki_vla_ros.ros.demo:eval_main", "closed-loop success / instruction following over seeded episodes"),
    "run": ("ki_vla_ros.ros.cli_commands:run_main", "run the policy node for an embodiment (no ros2 launch needed)"),
    "command": ("ki_vla_ros.ros.cli_commands:command_main", "set a running node's instruction, start / stop it"),
    "replay": ("ki_vla_ros.ros.cli_commands:replay_main", "publish a rosbag2 into ROS 2 topics with its timing"),
    "eval-bag": ("ki_vla_ros.ros.cli_commands:eval_bag_main", "run a policy offline over a bag, report error"),
    "train": ("ki_vla_ros.train.cli:train_main", "train a model (recipes ki, joint, pi0, ...) from bags / LeRobot"),
    "export": ("ki_vla_ros.export.cli:export_main", "write a model folder's ONNX files (and TensorRT engines)"),
    "import": ("ki_vla_ros.train.import_checkpoint:import_main", "a π0.5 checkpoint (LeRobot / openpi) to a "
               "model folder"),
    "study": ("ki_vla_ros.study.run:study_main", "the recipe study: every recipe from one vision-language base, "
              "measured over training (resumable)"),
    "init-model": ("ki_vla_ros.runtime.init_model:init_model_main", "make a random-weight model folder "
                   "for an embodiment (commissioning, tests)"),
}


def _usage() -> str:
    width = max((len(n) for n in SUBCOMMANDS), default=8)
    lines = ["usage: ki-vla COMMAND [options]   (ki-vla COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"ki-vla: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name = SUBCOMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        code = func(rest)
    except DatasetError as exc:  # bad data: one line naming the file, no traceback
        print(f"ki-vla {name}: {exc}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
