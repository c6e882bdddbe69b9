"""The `ki-vla` command: one entry point, one subcommand per job.

Each subcommand lives in the module that owns the job and is imported only when used, so
`ki-vla export` works on a GPU cluster without ROS and `ki-vla run` without a training stack.
"""

from __future__ import annotations

import importlib
import sys

# name -> ("module:function", one-line help). The function takes argv (list[str]) and returns
# an exit code (or None for 0).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
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
    code = func(rest)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
