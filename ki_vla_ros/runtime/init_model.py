"""A complete model folder with untrained (random) weights, for a given layout.

For commissioning a robot before a trained model exists (the node runs, every topic and safety
path works, the arm moves only within limits) and for tests. The tokenizers are fitted on the
given instructions and on smooth random chunks; normalisation statistics come from the limits.
`ki-vla init-model OUT --preset tiny --embodiment aloha_bimanual` calls this.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from ki_vla_ros.model import KIVLA, ModelConfig
from ki_vla_ros.normalize import NormStats, QuantileStats
from ki_vla_ros.runtime.model_dir import Layout, save_model_dir
from ki_vla_ros.tokenize.fast import FastTokenizer
from ki_vla_ros.tokenize.text import TextTokenizer

DEFAULT_INSTRUCTIONS = ("pick up the red cube", "pick up the blue cube", "hand the cube over", "stop")


def smooth_chunks(n: int, horizon: int, dim: int, seed: int) -> np.ndarray:
    """n smooth random chunks [n, H, D] in about [-1, 1] (sums of a few low-frequency cosines)."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, horizon)[None, :, None]
    out = np.zeros((n, horizon, dim))
    for k in range(3):
        amp = rng.uniform(-0.5, 0.5, (n, 1, dim)) / (k + 1)
        out += amp * np.cos(math.pi * k * t + rng.uniform(0, math.pi, (n, 1, dim)))
    return out.clip(-1, 1)


def _pad8(n: int) -> int:
    return max(8, -(-n // 8) * 8)


def init_model_dir(out: str | Path, layout: Layout, preset: str = "tiny", seed: int = 0,
                   instructions: tuple[str, ...] = DEFAULT_INSTRUCTIONS,
                   state_range: tuple[np.ndarray, np.ndarray] | None = None,
                   action_range: tuple[np.ndarray, np.ndarray] | None = None, **overrides) -> Path:
    """Write a random-weight model folder for `layout`. `state_range` / `action_range` are the
    (low, high) per dimension used as normalisation statistics (default [-1, 1])."""
    ns, na = len(layout.state_names), len(layout.action_names)
    overrides.setdefault("state_dim", max(ModelConfig.preset(preset).state_dim, _pad8(ns)))
    overrides.setdefault("action_dim", max(ModelConfig.preset(preset).action_dim, _pad8(na)))
    # text state (padded to state_dim by the prompt builder): about two tokens per number, the
    # instruction and ";\nAction: "
    overrides.setdefault("max_prefix_tokens", max(ModelConfig.preset(preset).max_prefix_tokens,
                                                  2 * overrides["state_dim"] + 40))
    config = ModelConfig.preset(preset, **overrides)
    torch.manual_seed(seed)
    model = KIVLA(config)

    numbers = " ".join(str(b) for b in range(-1, config.state_bins))
    texts = [f"Task: {i}, State: {numbers};\nAction: " for i in instructions] * 4
    text_tok = TextTokenizer.train(texts, vocab_size=min(512, config.text_vocab_limit))
    fast = FastTokenizer(vocab_size=min(config.num_fast_tokens, 256)).fit(
        list(smooth_chunks(64, config.action_horizon, na, seed)))

    def stats(rng, n):
        low, high = (np.full(n, -1.0), np.full(n, 1.0)) if rng is None else map(np.asarray, rng)
        return QuantileStats(np.asarray(low, np.float64), np.asarray(high, np.float64))

    norm = NormStats(stats(state_range, ns), stats(action_range, na))
    notes = {"weights": f"random (seed {seed}), untrained: for commissioning and tests only"}
    return save_model_dir(out, model, layout, text_tok, fast, norm, recipe="ki", notes=notes)


def init_model_main(argv: list[str]) -> int:
    """`ki-vla init-model OUT --embodiment NAME [--preset tiny|small] [--seed N]`."""
    from ki_vla_ros.embodiment import load_embodiment

    parser = argparse.ArgumentParser(prog="ki-vla init-model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="model folder to write")
    parser.add_argument("--embodiment", default="aloha_bimanual", help="name in config/embodiments/ or a YAML path")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    emb = load_embodiment(args.embodiment)
    layout = Layout(emb.camera_names, emb.state_names, emb.action_names, emb.control_rate_hz)

    def ranges(names):  # joint limits (base velocities for the base's action dims) as stats
        low, high = [], []
        for name in names:
            if name in emb.limits.joints:
                limit = emb.limits.joints[name]
                low.append(limit.lower)
                high.append(limit.upper)
            else:
                bound = emb.limits.base.angular if name.endswith("angular_z") else emb.limits.base.linear
                low.append(-bound)
                high.append(bound)
        return np.array(low), np.array(high)

    path = init_model_dir(args.out, layout, preset=args.preset, seed=args.seed,
                          state_range=ranges(layout.state_names), action_range=ranges(layout.action_names))
    print(f"wrote {path} (random weights, preset {args.preset}, embodiment {emb.name})")
    return 0
