"""`Policy`: a model folder ready to act. One observation in, one action chunk (robot units) out.

    policy = Policy.load("models/aloha_pick4", backend="onnxruntime")
    out = policy.infer(Observation(images={...}, state=q, instruction="pick up the red cube"), seed=0)
    out.actions        # float64 [H, action_dim] in robot units
    out.timings_ms     # preprocess, model (prefix pass + flow loop), postprocess, total

The backbone runs once per observation (the prefix pass leaves per-layer K/V); the action expert
then integrates the flow over that cache (`num_steps` Euler steps from t = 1, noise, to t = 0),
in one `backend.chunk` call (OpenVINO: one graph; benchmarks/latency.py times the two apart).
Noise comes from a numpy generator seeded per call (`seed`) or owned by the policy (`rng_seed`),
so runs can be reproduced; `noise=` overrides it exactly.

Real-time chunking (model/rtc.py): `infer(obs, action_prefix=A)` with A [d, action_dim] in robot
units (the policy's action order) — the actions the robot executes while this inference runs —
returns a chunk whose first d actions are A (up to float32 rounding through the normalisation)
and whose rest continues them. Only a model trained with action prefixes (model.yaml `rtc`) can
use one: `max_action_prefix` is its largest trained delay, 0 for any other model, which ignores
the prefix (no inference-time guidance here). A longer prefix is cut to `max_action_prefix`.

Precision (runtime/precision.py): `Policy.load(..., precision="bf16")` (torch) or "int8"
(onnxruntime) once the model folder records that precision as checked against fp32; "auto" is
fp32 on torch and onnxruntime, bf16 / fp16 on TensorRT.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ki_vla_ros.runtime.backends import BackendError, make_backend
from ki_vla_ros.runtime.model_dir import Layout, ModelBundle, load_model_dir
from ki_vla_ros.runtime.precision import require_checked, resolve_precision
from ki_vla_ros.runtime.preprocess import images_to_model
from ki_vla_ros.runtime.types import Observation, PolicyOutput
from ki_vla_ros.tokenize.prompt import PromptBuilder


class Policy:
    def __init__(self, bundle: ModelBundle, backend, num_steps: int, rng_seed: int | None = None):
        self.bundle, self.backend, self.num_steps = bundle, backend, num_steps
        self.config = bundle.config
        self.prompt = PromptBuilder(bundle.text_tokenizer, bundle.config)
        self.rng = np.random.default_rng(rng_seed)
        self.delta = self.layout.delta()
        spec = getattr(backend, "spec", None)
        self.prompt_tokens = spec.prompt_tokens if spec else self.config.max_prefix_tokens
        if spec and spec.num_cameras != len(self.layout.camera_names):
            raise BackendError(f"the ONNX export has {spec.num_cameras} cameras, the layout "
                               f"{len(self.layout.camera_names)}; re-export")

    @classmethod
    def load(cls, model_dir: str | Path, backend: str = "torch", num_steps: int | None = None,
             device: str = "cpu", compile: bool = False, precision: str = "auto",
             threads: int | None = None, rng_seed: int | None = None, require_check: bool = True) -> Policy:
        """`require_check=False` skips the precision record (for the check itself)."""
        bundle = load_model_dir(model_dir, device="cpu")
        steps = num_steps or bundle.manifest.num_flow_steps
        precision = resolve_precision(backend, precision)
        if require_check:
            require_checked(bundle.path, bundle.weights_sha256, backend, precision)
        impl = make_backend(bundle, backend, steps, device=device, compile=compile, precision=precision,
                            threads=threads)
        return cls(bundle, impl, steps, rng_seed)

    @property
    def precision(self) -> str:
        return self.backend.precision

    # ---- what the model expects --------------------------------------------------------------
    @property
    def layout(self) -> Layout:
        return self.bundle.layout

    @property
    def action_horizon(self) -> int:
        return self.config.action_horizon

    @property
    def control_rate_hz(self) -> float:
        return self.layout.control_rate_hz

    @property
    def max_action_prefix(self) -> int:
        """Longest action prefix the model was trained to continue; 0: it ignores prefixes."""
        rtc = self.bundle.manifest.rtc
        return rtc.max_delay_steps if rtc.enabled else 0

    # ---- inference -----------------------------------------------------------------------------
    def model_inputs(self, obs: Observation) -> tuple[np.ndarray, ...]:
        """Observation -> (images, image_mask, tokens, token_mask, state), batch of 1, as the
        backends take them. Raises ValueError on a state of the wrong size or with NaN/inf."""
        c, layout = self.config, self.layout
        state = np.asarray(obs.state, np.float64)
        if state.shape != (len(layout.state_names),):
            raise ValueError(f"state has shape {state.shape}, the model needs ({len(layout.state_names)},) "
                             f"in the order {layout.state_names}")
        if not np.isfinite(state).all():
            raise ValueError(f"state contains NaN or inf: {state.tolist()}")
        if not obs.instruction or not obs.instruction.strip():
            raise ValueError("the instruction is empty")
        unknown = set(obs.images) - set(layout.camera_names)
        if unknown:
            raise ValueError(f"unknown cameras {sorted(unknown)}; the model knows {layout.camera_names}")
        pixels, image_mask = images_to_model(obs.images, layout.camera_names, c.image_size)
        norm_state = self.bundle.norm_stats.state.normalize(state)
        tokens, token_mask = self.prompt.inference_prefix(obs.instruction, norm_state, pad_to=self.prompt_tokens)
        padded_state = np.zeros(c.state_dim, np.float32)
        padded_state[: len(norm_state)] = norm_state
        return (pixels[None], image_mask[None], tokens[None], token_mask[None], padded_state[None])

    def draw_noise(self, seed: int | None = None) -> np.ndarray:
        rng = np.random.default_rng(seed) if seed is not None else self.rng
        c = self.config
        return rng.standard_normal((1, c.action_horizon, c.action_dim)).astype(np.float32)

    def actions_to_robot(self, actions_norm: np.ndarray, state: np.ndarray) -> np.ndarray:
        """The model's normalised actions [H, >= n_actions] -> robot units [H, n_actions]: denormalised,
        and the state added back to the delta dims (Layout.delta_actions)."""
        n = len(self.layout.action_names)
        actions = self.bundle.norm_stats.actions.denormalize(np.asarray(actions_norm, np.float64)[:, :n])
        return self.delta.to_robot(actions, state)

    def prefix_for_model(self, action_prefix: np.ndarray, state: np.ndarray) -> tuple[np.ndarray | None, int]:
        """Robot-unit prefix [d, n_actions] -> (normalised, zero-padded [1, H, D] float32, length), cut
        to `max_action_prefix`; (None, 0) for a model without prefix training or an empty prefix.
        `state`: the observation's state (delta dims are made relative to it). Raises ValueError on a
        wrong shape or NaN/inf."""
        names = self.layout.action_names
        prefix = np.asarray(action_prefix, np.float64)
        if prefix.ndim != 2 or prefix.shape[1] != len(names) or len(prefix) > self.action_horizon:
            raise ValueError(f"action_prefix has shape {prefix.shape}, the model needs [d <= "
                             f"{self.action_horizon}, {len(names)}] in the order {names}")
        if not np.isfinite(prefix).all():
            raise ValueError("action_prefix contains NaN or inf")
        d = min(len(prefix), self.max_action_prefix)
        if d == 0:
            return None, 0
        out = np.zeros((1, self.config.action_horizon, self.config.action_dim), np.float32)
        out[0, :d, : len(names)] = self.bundle.norm_stats.actions.normalize(self.delta.to_model(prefix[:d], state))
        return out, d

    def infer(self, obs: Observation, seed: int | None = None, noise: np.ndarray | None = None,
              action_prefix: np.ndarray | None = None) -> PolicyOutput:
        t0 = time.perf_counter()
        inputs = self.model_inputs(obs)
        noise = self.draw_noise(seed) if noise is None else np.asarray(noise, np.float32).reshape(
            1, self.config.action_horizon, self.config.action_dim)
        prefix, prefix_len = (None, 0) if action_prefix is None else self.prefix_for_model(action_prefix, obs.state)
        t1 = time.perf_counter()
        actions_norm = self.backend.chunk(inputs, noise, prefix, prefix_len)[0]  # numpy: the work is done
        t2 = time.perf_counter()
        actions = self.actions_to_robot(actions_norm, obs.state)
        if not np.isfinite(actions).all():
            raise FloatingPointError("the model produced NaN or inf actions; refusing to return them")
        t3 = time.perf_counter()
        timings = {"preprocess": t1 - t0, "model": t2 - t1, "postprocess": t3 - t2, "total": t3 - t0}
        return PolicyOutput(actions, {k: v * 1e3 for k, v in timings.items()})
