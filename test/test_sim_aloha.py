"""MuJoCo ALOHA simulator: cameras, joint layout and limits, joint-position control."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from ki_vla_ros.sim.aloha import CAMERA_MAP, CONTROL_DT, JOINT_NAMES, AlohaSim, joint_limits


@pytest.fixture(scope="module")
def sim():
    s = AlohaSim("pick_red_left", seed=3, image_size=224)
    yield s
    s.close()


def test_joint_layout_and_limits():
    assert len(JOINT_NAMES) == 14
    assert JOINT_NAMES[:7] == ("left_waist", "left_shoulder", "left_elbow", "left_forearm_roll",
                               "left_wrist_angle", "left_wrist_rotate", "left_gripper")
    assert JOINT_NAMES[7:] == tuple(n.replace("left_", "right_") for n in JOINT_NAMES[:7])
    lo, hi = joint_limits()
    assert lo.shape == hi.shape == (14,)
    assert np.all(lo < hi)
    # from the gym-aloha XML: shoulder range -1.85005 .. 1.25664, gripper normalised 0 .. 1
    assert lo[1] == pytest.approx(-1.85005) and hi[1] == pytest.approx(1.25664)
    assert (lo[6], hi[6], lo[13], hi[13]) == (0.0, 1.0, 0.0, 1.0)


def test_three_cameras_render_at_224(sim):
    imgs = {c: sim.render(c) for c in CAMERA_MAP}
    for c, im in imgs.items():
        assert im.shape == (224, 224, 3) and im.dtype == np.uint8, c
        assert im.std() > 5, f"{c} looks constant"
    top = imgs["cam_high"].astype(float)
    for c in ("cam_left_wrist", "cam_right_wrist"):
        assert np.abs(imgs[c].astype(float) - top).mean() > 10, f"{c} looks like the top camera"
    obs = sim.observation()
    assert set(obs["images"]) == {"cam_high", "cam_left_wrist", "cam_right_wrist"}
    # both cubes are visible from the top: red-ish and blue-ish pixels exist
    im = imgs["cam_high"].astype(int)
    assert (im[..., 0] - im[..., 1:].max(-1) > 80).sum() > 3
    assert (im[..., 2] - im[..., :2].max(-1) > 80).sum() > 3


def test_joint_position_control_tracks_target():
    s = AlohaSim("pick_red_left", seed=0, cameras=())
    q0 = s.joint_positions()
    assert s.sim_time == 0.0
    target = q0.copy()
    target[[0, 1, 2, 4]] += [0.3, 0.2, -0.2, 0.3]  # left waist, shoulder, elbow, wrist angle
    target[[7, 8]] += [-0.3, 0.15]
    target[6] = 0.0  # close left gripper
    for _ in range(100):  # 2 s
        obs = s.step(target, render=False)
    assert s.sim_time == pytest.approx(100 * CONTROL_DT)
    q = obs["qpos"]
    err = np.abs(q - target)
    assert err[[0, 1, 2, 4, 7, 8]].max() < 0.03, err
    assert q[6] < 0.1 and q[13] > 0.9  # left gripper closed, right still open
    assert np.abs(q - q0)[[0, 7]].min() > 0.25  # it really moved
    # targets beyond the limits are clipped, not applied
    lo, hi = joint_limits()
    s.step(np.full(14, 100.0), render=False)
    assert np.all(s.last_action <= hi) and np.all(s.last_action >= lo)
    s.close()


def test_reset_is_seeded():
    s = AlohaSim("pick_blue_right", seed=5, cameras=())
    a = s.cube_position("red"), s.cube_position("blue")
    s.reset(6)
    b = s.cube_position("red")
    s.reset(5)
    assert np.allclose(s.cube_position("red"), a[0]) and np.allclose(s.cube_position("blue"), a[1])
    assert not np.allclose(a[0], b)
    s.close()


def test_cam_high_frames_the_cube_layout_at_the_model_resolution():
    """At the `small` preset's input size a cube spans about one patch and the cube layout region
    (cube extents included) lies inside cam_high, filling most of its width."""
    from ki_vla_ros.model.config import ModelConfig
    from ki_vla_ros.sim.aloha import CUBE_HALF
    from ki_vla_ros.sim.tasks import LAYOUT_X, LAYOUT_Y

    cfg = ModelConfig.preset("small")
    s = AlohaSim("pick_red_left", seed=3, image_size=cfg.image_size, cameras=())
    corners = np.array([s.project("cam_high", (x, y, 0.0)) for x in (LAYOUT_X[0] - CUBE_HALF, LAYOUT_X[1] + CUBE_HALF)
                        for y in (LAYOUT_Y[0] - CUBE_HALF, LAYOUT_Y[1] + CUBE_HALF)])
    assert corners.min() > 0 and corners.max() < cfg.image_size
    assert np.ptp(corners[:, 0]) > 0.7 * cfg.image_size and np.ptp(corners[:, 1]) > 0.5 * cfg.image_size
    img = s.render("cam_high").astype(int)
    masks = {"red": img[..., 0] - img[..., 1:].max(-1) > 80, "blue": img[..., 2] - img[..., :2].max(-1) > 80}
    for colour, mask in masks.items():
        ys, xs = np.nonzero(mask)
        assert np.ptp(xs) + 1 >= 0.85 * cfg.patch_size and np.ptp(ys) + 1 >= 0.85 * cfg.patch_size, colour
        # image right = +x, image up = +y: the projected top-face centre is where the pixels are
        u, v = s.project("cam_high", s.cube_position(colour) + [0, 0, CUBE_HALF])
        assert abs(xs.mean() + 0.5 - u) < 1.5 and abs(ys.mean() + 0.5 - v) < 1.5, colour
    s.close()
