"""The simulated robot node over real DDS: the sim runs in a child process, this test process
subscribes to its clock, cameras and joint states, commands its arms and resets it.

One sim process serves the module (start-up and discovery take seconds); tests run in order.
"""

import json
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from builtin_interfaces.msg import Duration  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from ros_helpers import Observer, Proc, ros_environment, wait_until  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from ki_vla_ros.embodiment import load_embodiment  # noqa: E402

pytestmark = [pytest.mark.dds, pytest.mark.slow]

NODE = "/sim_node"
EMB = load_embodiment("aloha_bimanual")
LEFT_STATE, RIGHT_STATE = "/follower_left/joint_states", "/follower_right/joint_states"
LEFT_CMD, RIGHT_CMD = "/left_arm_controller/joint_trajectory", "/right_arm_controller/joint_trajectory"
STATUS = f"{NODE}/episode_status"
SIZE = 64


class Rig:
    def __init__(self, tmp):
        self.env = ros_environment(tmp)
        args = [sys.executable, "-m", "ki_vla_ros.ros.sim_node", "--ros-args", "-p", f"image_size:={SIZE}",
                "-p", "task:=pick_red_left", "-p", "seed:=1", "-p", "status_period_s:=0.1"]
        self.proc = Proc(args, self.env, tmp / "sim.log")
        self.obs = Observer("sim_test_observer")
        self.obs.subscribe(Clock, "/clock")
        for cam in EMB.cameras:
            self.obs.subscribe(Image, cam.topic, qos_profile_sensor_data)
        for topic in (LEFT_STATE, RIGHT_STATE):
            self.obs.subscribe(JointState, topic, qos_profile_sensor_data)
        status_qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.obs.subscribe(String, STATUS, status_qos)
        self.pubs = {t: self.obs.node.create_publisher(JointTrajectory, t, 10) for t in (LEFT_CMD, RIGHT_CMD)}

    def status(self) -> dict:
        msgs = self.obs.received(STATUS)
        return json.loads(msgs[-1].data) if msgs else {}

    def joints(self, topic=LEFT_STATE) -> np.ndarray:
        return np.array(self.obs.received(topic)[-1].position)

    def send(self, topic, joints, points, stamp_zero=True):
        msg = JointTrajectory()
        msg.joint_names = list(joints)
        for t, pos in points:
            pt = JointTrajectoryPoint(positions=[float(v) for v in pos])
            pt.time_from_start = Duration(sec=int(t), nanosec=int(round((t % 1) * 1e9)))
            msg.points.append(pt)
        self.pubs[topic].publish(msg)


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(tmp_path_factory.mktemp("sim_node"))
    try:
        ok = wait_until(lambda: r.obs.received(LEFT_STATE) and r.obs.received("/clock")
                        and r.obs.node.count_subscribers(LEFT_CMD) > 0, 40.0)
        assert ok, "sim node not discovered\n" + r.proc.tail()
        yield r
    finally:
        r.obs.close()
        code = r.proc.stop()
    assert code == 0, "sim node did not exit cleanly on SIGINT\n" + r.proc.tail()


def test_publishes_clock_cameras_joint_states_and_status(rig):
    assert wait_until(lambda: all(len(rig.obs.received(c.topic)) >= 3 for c in EMB.cameras), 20.0), rig.proc.tail()
    clocks = [m.clock.sec + m.clock.nanosec * 1e-9 for m in rig.obs.received("/clock")]
    assert len(clocks) >= 3 and all(b >= a for a, b in zip(clocks, clocks[1:])), clocks[:10]
    steps = np.diff(clocks)
    assert np.all(np.isclose(steps[steps > 0] % 0.02, 0, atol=1e-6) | np.isclose(steps[steps > 0] % 0.02, 0.02))
    for cam in EMB.cameras:
        img = rig.obs.received(cam.topic)[-1]
        assert (img.height, img.width, img.encoding, img.step) == (SIZE, SIZE, "rgb8", SIZE * 3)
        assert img.header.frame_id == cam.name
        t = img.header.stamp.sec + img.header.stamp.nanosec * 1e-9
        assert 0 < t <= clocks[-1] + 5.0  # sim time, not wall time
        assert np.frombuffer(bytes(img.data), np.uint8).std() > 5  # a rendered scene, not a blank
    left, right = rig.obs.received(LEFT_STATE)[-1], rig.obs.received(RIGHT_STATE)[-1]
    assert list(left.name) == EMB.state[0].joints and list(right.name) == EMB.state[1].joints
    assert len(left.position) == 7 and len(left.velocity) == 7
    assert wait_until(lambda: rig.status().get("real_time_factor", 0) > 0, 10.0), rig.status()
    st = rig.status()
    assert st["task"] == "pick_red_left" and st["seed"] == 1
    assert st["success"] is False and st["done"] is False


def test_holds_still_until_the_first_command(rig):
    """No command yet: the clock, joint states and cameras keep coming, the robot does not move
    (not even sagging under gravity) and the episode has not started."""
    t0 = rig.obs.received("/clock")[-1].clock
    q0l, q0r = rig.joints(LEFT_STATE), rig.joints(RIGHT_STATE)
    n_img = len(rig.obs.received(EMB.cameras[0].topic))
    img0 = bytes(rig.obs.received(EMB.cameras[0].topic)[-1].data)
    time.sleep(1.0)
    t1 = rig.obs.received("/clock")[-1].clock
    assert (t1.sec + t1.nanosec * 1e-9) - (t0.sec + t0.nanosec * 1e-9) > 0.3  # the clock runs
    assert len(rig.obs.received(EMB.cameras[0].topic)) > n_img
    assert bytes(rig.obs.received(EMB.cameras[0].topic)[-1].data) == img0
    np.testing.assert_array_equal(rig.joints(LEFT_STATE), q0l)
    np.testing.assert_array_equal(rig.joints(RIGHT_STATE), q0r)
    st = rig.status()
    assert st["waiting_for_command"] is True and st["episode_time"] == 0.0, st


def test_trajectory_moves_the_joints(rig):
    start_l, start_r = rig.joints(LEFT_STATE), rig.joints(RIGHT_STATE)
    target_l = start_l.copy()
    target_l[0] = start_l[0] + 0.4  # waist
    # right arm: only its gripper (partial trajectory), closing
    rig.send(LEFT_CMD, EMB.state[0].joints, [(0.5, start_l + (target_l - start_l) / 2), (1.0, target_l)])
    rig.send(RIGHT_CMD, ["right_gripper"], [(0.5, [0.2])])
    ok = wait_until(lambda: abs(rig.joints(LEFT_STATE)[0] - target_l[0]) < 0.05
                    and rig.joints(RIGHT_STATE)[6] < 0.35, 40.0)
    assert ok, (rig.joints(LEFT_STATE), rig.joints(RIGHT_STATE), rig.status(), rig.proc.tail())
    assert rig.status()["waiting_for_command"] is False and rig.status()["episode_time"] > 0.5
    np.testing.assert_allclose(rig.joints(RIGHT_STATE)[:6], start_r[:6], atol=0.05)  # others held
    assert rig.status()["trajectories"] >= 2


def test_bad_trajectory_is_refused_not_a_crash(rig):
    before = rig.status().get("trajectory_errors", 0)
    rig.send(LEFT_CMD, ["left_waist", "no_such_joint"], [(0.5, [0.0, 0.0])])
    assert wait_until(lambda: rig.status().get("trajectory_errors", 0) > before, 20.0), rig.proc.tail()
    assert "no_such_joint" in rig.status()["last_error"]
    assert rig.proc.popen.poll() is None


def test_parameters_and_reset(rig):
    res = rig.obs.set_parameter(NODE, "task", "no_such_task")
    assert not res.successful and "unknown task" in res.reason
    assert rig.obs.set_parameter(NODE, "task", "pick_blue_right").successful
    assert rig.obs.set_parameter(NODE, "seed", 7).successful
    assert rig.obs.set_parameter(NODE, "max_sim_time_s", 0.3).successful
    clock_before = rig.obs.received("/clock")[-1].clock.sec + rig.obs.received("/clock")[-1].clock.nanosec * 1e-9
    res = rig.obs.call(Trigger, f"{NODE}/reset")
    assert res.success, res.message
    # nobody commands: the episode ends after max_sim_time_s of waiting, without moving
    assert wait_until(lambda: rig.status().get("task") == "pick_blue_right" and rig.status().get("done"), 30.0), (
        rig.status(), rig.proc.tail())
    st = rig.status()
    assert st["seed"] == 7 and st["instruction"] == "pick up the blue cube with the right arm"
    assert st["episode_time"] == 0.0 and st["waiting_for_command"] is True
    # the cameras show the new scene while holding still, not the frames kept from the old one
    from ki_vla_ros.sim.aloha import AlohaSim

    with AlohaSim("pick_blue_right", seed=7, image_size=SIZE) as fresh:
        for cam in EMB.cameras:
            img = rig.obs.received(cam.topic)[-1]
            got = np.frombuffer(bytes(img.data), np.uint8).reshape(SIZE, SIZE, 3).astype(int)
            assert np.abs(got - fresh.render(cam.name).astype(int)).mean() < 1.0, cam.name
    # commanded: the episode runs max_sim_time_s from the first command
    assert rig.obs.call(Trigger, f"{NODE}/reset").success
    assert wait_until(lambda: rig.status().get("waiting_for_command") and not rig.status().get("done"), 10.0)
    rig.send(RIGHT_CMD, ["right_gripper"], [(0.1, [0.5])])
    assert wait_until(lambda: rig.status().get("done") and not rig.status().get("waiting_for_command"), 30.0), (
        rig.status(), rig.proc.tail())
    st = rig.status()
    assert st["episode_time"] == pytest.approx(0.3, abs=0.021)
    assert st["sim_time"] > clock_before  # the clock continues across resets
    # back at the home pose: the left waist returned to 0 (it was moved above)
    assert abs(rig.joints(LEFT_STATE)[0]) < 0.05
    # a paused sim stands still; unlimited again after the next reset
    assert rig.obs.set_parameter(NODE, "max_sim_time_s", 0.0).successful
    assert rig.obs.call(Trigger, f"{NODE}/reset").success
    rig.send(RIGHT_CMD, ["right_gripper"], [(0.1, [0.5])])
    t0 = time.monotonic()
    assert wait_until(lambda: rig.status().get("episode_time", 0) > 0.2 and not rig.status()["done"], 20.0)
    assert time.monotonic() - t0 < 20.0
