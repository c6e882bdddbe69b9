"""The action prefix the node hands a policy trained for real-time chunking: what the running chunk
commands at t_obs + (i + 1)·dt during the expected latency, in the policy's action order."""

import numpy as np

from ki_vla_ros.control.executor import ChunkExecutor
from ki_vla_ros.control.policy_loader import LayoutMapper
from ki_vla_ros.embodiment import load_embodiment


def _ramp_chunk(t0: float, n: int, dt: float, speed: float) -> np.ndarray:
    """A 14-D chunk whose action i targets t0 + (i + 1) dt on ramps q_j = 0.05 + speed_j * t (in limits)."""
    speeds = speed * np.linspace(0.2, 1, 14)
    return 0.05 + speeds * (t0 + (np.arange(n) + 1) * dt)[:, None]


def test_prefix_is_what_the_running_chunk_commands_during_the_latency():
    emb = load_embodiment("aloha_bimanual")
    ex = ChunkExecutor(emb)
    dt, speed = emb.dt, 0.5
    assert ex.action_prefix(0.0, 0.2, 10) is None  # nothing running yet
    # a chunk observed at 0.1 s, published 0.06 s later (3 passed steps dropped)
    at_publish = _ramp_chunk(0.16 - dt, 1, dt, speed)[0]  # the arm is on the ramp: no velocity limiting
    ex.accept(ex.make_plan(_ramp_chunk(0.1, 50, dt, speed), at_publish, elapsed=0.06, t_publish=0.16))
    t_obs = 0.3 + 0.007  # off the first chunk's time grid: the prefix interpolates its waypoints
    prefix = ex.action_prefix(t_obs, latency=0.11, max_steps=10)  # ceil(0.11 / 0.02) = 6 steps
    assert prefix.shape == (6, 14)
    np.testing.assert_allclose(prefix, _ramp_chunk(t_obs, 6, dt, speed), atol=1e-12)
    assert ex.action_prefix(t_obs, latency=0.11, max_steps=4).shape == (4, 14)  # the trained maximum
    assert ex.action_prefix(t_obs, latency=0.0, max_steps=10) is None
    assert ex.action_prefix(t_obs, latency=0.11, max_steps=0) is None  # a policy without prefix training
    # past the chunk's end the controller holds its last waypoint
    late = ex.action_prefix(10.0, latency=0.04, max_steps=10)
    np.testing.assert_allclose(late, np.tile(_ramp_chunk(0.1, 50, dt, speed)[-1], (2, 1)))
    ex.hold(0.5)
    assert ex.action_prefix(0.5, 0.1, 10) is None  # after a hold: a fresh start, no prefix


def test_base_twist_prefix_and_layout_back_to_the_policy_order():
    emb = load_embodiment("mobile_aloha")
    ex = ChunkExecutor(emb)
    actions = np.zeros((10, 16))
    actions[:, 14] = np.linspace(0.0, 0.45, 10)  # forward speed ramps up
    ex.accept(ex.make_plan(actions, np.zeros(14), 0.0, t_publish=0.0))
    prefix = ex.action_prefix(0.0, latency=3 * emb.dt, max_steps=8)
    np.testing.assert_allclose(prefix[:, 14], actions[:3, 14])
    assert ex.action_prefix(1.0, latency=2 * emb.dt, max_steps=8)[:, 14:].tolist() == [[0, 0], [0, 0]]

    class Layout:
        camera_names = emb.camera_names
        state_names = emb.state_names
        action_names = list(reversed(emb.action_names))

    class P:
        layout = Layout()

    mapper = LayoutMapper(emb, P())
    back = mapper.actions_for_policy(prefix)
    np.testing.assert_allclose(back, prefix[:, ::-1])
    np.testing.assert_allclose(mapper.actions_for_embodiment(back), prefix)
    Layout.action_names = [*emb.action_names, "torso_lift"]  # an action this robot does not execute
    assert LayoutMapper(emb, P()).actions_for_policy(prefix) is None
