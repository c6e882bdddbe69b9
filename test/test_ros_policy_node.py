"""The policy node over real DDS: a robot stand-in process publishes cameras and joint states,
the node runs in another process, this test process drives its lifecycle (lifecycle_msgs
services), commands it and watches its outputs.

One node and one stand-in serve the whole module (start-up and discovery take seconds); the
tests run in file order and each leaves the node in the state the next one expects.
"""

import math
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from ros_helpers import (  # noqa: E402
    Observer,
    Proc,
    policy_node_cmd,
    problem_lines,
    ros_environment,
    stand_in_cmd,
    wait_until,
)
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from ki_vla_ros.embodiment import load_embodiment  # noqa: E402

pytestmark = [pytest.mark.dds, pytest.mark.slow]

NODE = "/policy_node"
LEFT = "/left_arm_controller/joint_trajectory"
RIGHT = "/right_arm_controller/joint_trajectory"
EMB = load_embodiment("aloha_bimanual")


class Rig:
    def __init__(self, tmp):
        self.env = ros_environment(tmp)
        self.standin = Proc(stand_in_cmd(), self.env, tmp / "standin.log", stdin=True)
        # 1 s: long enough that a scheduling hiccup of this shared test machine is not "stale"
        self.node = Proc(policy_node_cmd("stale_timeout_s:=1.0"), self.env, tmp / "node.log")
        self.obs = Observer()
        for topic in (LEFT, RIGHT):
            self.obs.subscribe(JointTrajectory, topic)
        self.obs.subscribe(DiagnosticArray, "/diagnostics")
        self.obs.subscribe(Float64MultiArray, f"{NODE}/action_chunk")
        self.instr_pub = self.obs.node.create_publisher(String, f"{NODE}/instruction", 10)

    def logs(self) -> str:
        return self.node.tail() + "\n" + self.standin.tail(1000)

    def chunks(self, topic=LEFT, since=0.0):
        """Trajectories of a real chunk (more than one point; a hold is a single point)."""
        return [m for m in self.obs.received(topic, since) if len(m.points) > 1]

    def diag(self):
        return self.obs.latest_diagnostics() or {}

    def close(self):
        self.obs.close()
        codes = (self.node.stop(), self.standin.stop())
        return codes


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    r = Rig(tmp_path_factory.mktemp("ros_policy_node"))
    try:
        assert wait_until(r.diag, 30.0), "policy node not discovered\n" + r.logs()  # diagnostics come unconfigured
        yield r
    finally:
        codes = r.close()
    assert codes[0] == 0, "policy node did not exit cleanly on SIGINT\n" + r.node.tail()
    # the one error provoked on purpose: a configure with a policy class that does not exist
    assert problem_lines(r.node.output(), expected=("NoSuchPolicy",)) == [], r.node.tail()


def test_lifecycle_starts_unconfigured_configure_warms_up_activate_allows_start(rig):
    assert rig.obs.lifecycle_state(NODE) == "unconfigured"
    assert rig.diag()["state"] == "unconfigured"
    res = rig.obs.call(Trigger, f"{NODE}/start")
    assert not res.success and "unconfigured" in res.message
    assert rig.obs.node.count_publishers(LEFT) == 0  # no robot interfaces before configure
    assert rig.obs.lifecycle(NODE, "configure"), rig.logs()
    assert rig.obs.lifecycle_state(NODE) == "inactive"
    # the warm-up inference ran during configure (the scripted policy sleeps 30 ms per inference)
    assert wait_until(lambda: rig.diag().get("state") == "inactive", 3.0), rig.diag()
    assert float(rig.diag()["warmup_ms"]) >= 25.0, rig.diag()
    assert wait_until(lambda: rig.obs.node.count_publishers(LEFT) > 0, 5.0)
    res = rig.obs.call(Trigger, f"{NODE}/start")
    assert not res.success and "inactive" in res.message
    assert rig.obs.lifecycle(NODE, "activate")
    assert rig.obs.lifecycle_state(NODE) == "active"
    assert wait_until(lambda: rig.diag().get("state") == "idle", 3.0), rig.diag()


def _assert_safe(msg):
    assert msg.joint_names
    for pt in msg.points:
        assert all(math.isfinite(v) for v in pt.positions) and all(math.isfinite(v) for v in pt.velocities)
        for name, v in zip(msg.joint_names, pt.positions):
            lim = EMB.limits.joints[name]
            assert lim.lower - 1e-9 <= v <= lim.upper + 1e-9, (name, v)


def test_starts_idle_and_start_needs_an_instruction(rig):
    time.sleep(1.0)  # the node has seen cameras and joint states by now
    assert rig.chunks(LEFT) == [] and rig.obs.received(RIGHT) == [], "the node moved the robot while idle"
    assert rig.diag()["state"] == "idle"
    res = rig.obs.call(Trigger, f"{NODE}/start")
    assert not res.success and "instruction" in res.message
    time.sleep(0.5)
    assert rig.chunks(LEFT) == []


def test_instruction_parameter_is_validated(rig):
    res = rig.obs.set_parameter(NODE, "instruction", "")
    assert not res.successful and "empty" in res.reason
    res = rig.obs.set_parameter(NODE, "instruction", "x" * 501)
    assert not res.successful and "501" in res.reason
    res = rig.obs.set_parameter(NODE, "instruction", "open the grippers")
    assert res.successful, res.reason
    assert rig.obs.get_parameter(NODE, "instruction") == "open the grippers"
    # a bad instruction on the topic is refused as well
    rig.instr_pub.publish(String(data="   "))
    time.sleep(0.5)
    assert rig.obs.get_parameter(NODE, "instruction") == "open the grippers"
    res = rig.obs.set_parameter(NODE, "embodiment", "mobile_aloha")
    assert not res.successful  # read-only


def test_start_sends_safe_trajectories_with_configured_joints(rig):
    t0 = time.monotonic()
    res = rig.obs.call(Trigger, f"{NODE}/start")
    assert res.success, res.message
    assert wait_until(lambda: len(rig.chunks(LEFT, t0)) >= 3 and len(rig.chunks(RIGHT, t0)) >= 3, 10.0), rig.logs()
    left, right = rig.chunks(LEFT, t0)[-1], rig.chunks(RIGHT, t0)[-1]
    assert left.joint_names == list(EMB.outputs[0].joints)
    assert right.joint_names == list(EMB.outputs[1].joints)
    for msg in rig.chunks(LEFT, t0) + rig.chunks(RIGHT, t0):
        _assert_safe(msg)
        tfs = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]
        assert tfs[0] > 0 and all(b > a for a, b in zip(tfs, tfs[1:])), tfs
        assert len(msg.points[0].velocities) == len(msg.joint_names)
        # stamped with the publication time (node clock = wall time here): the controller runs the
        # waypoints at the planned times, however late the message arrives
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        assert 0.0 <= time.time() - stamp < 10.0, stamp
    # the scripted policy aims the shoulder at 5.0 rad: clamped to the 1.26 limit, velocity-limited
    shoulder = [p.positions[1] for p in left.points]
    assert max(shoulder) <= 1.26 + 1e-9
    steps = np.diff(shoulder)
    assert np.all(np.abs(steps) <= 3.0 * 0.02 + 1e-6)
    assert left.points[-1].positions[6] == pytest.approx(1.0)  # "open" -> gripper 1
    chunk = rig.obs.received(f"{NODE}/action_chunk")[-1]
    assert [d.label for d in chunk.layout.dim] == ["horizon", "action"] and chunk.layout.dim[1].size == 14
    assert wait_until(lambda: rig.diag()["state"] == "running", 3.0), rig.diag()  # diagnostics at 2 Hz


def test_instruction_change_takes_effect(rig):
    res = rig.obs.set_parameter(NODE, "instruction", "close the grippers")
    assert res.successful, res.reason
    t0 = time.monotonic()

    def closed():
        msgs = rig.chunks(RIGHT, t0)
        return msgs and msgs[-1].points[-1].positions[6] == pytest.approx(0.0)

    assert wait_until(closed, 5.0), rig.logs()
    assert wait_until(lambda: rig.diag().get("last_chunk_instruction") == "close the grippers", 3.0)
    rig.instr_pub.publish(String(data="open the grippers again"))
    t1 = time.monotonic()
    assert wait_until(lambda: (m := rig.chunks(LEFT, t1)) and m[-1].points[-1].positions[6] == 1.0, 5.0)


def test_stale_camera_stops_commands_reports_and_resumes(rig):
    t_off = time.monotonic()
    rig.standin.send("camera cam_left_wrist off")
    assert wait_until(lambda: "cam_left_wrist stale" in rig.diag().get("hold_reason", ""), 5.0), rig.logs()
    d = rig.diag()
    assert d["state"] == "holding" and d["_level"] == 1, d
    t_hold = time.monotonic()
    time.sleep(1.5)
    late = rig.chunks(LEFT, t_hold + 0.3) + rig.chunks(RIGHT, t_hold + 0.3)
    assert late == [], f"{len(late)} new chunks while a camera was stale"
    holds = [m for m in rig.obs.received(LEFT, t_off) if len(m.points) == 1]
    assert holds, "no hold trajectory was sent"
    _assert_safe(holds[-1])
    rig.standin.send("camera cam_left_wrist on")
    t_on = time.monotonic()
    assert wait_until(lambda: len(rig.chunks(LEFT, t_on)) >= 2, 5.0), rig.logs()
    assert wait_until(lambda: rig.diag()["state"] == "running", 2.0)  # diagnostics come at 2 Hz


def test_nan_joint_state_is_never_acted_on(rig):
    rig.standin.send("nan on")
    assert wait_until(lambda: "nan" in rig.diag().get("hold_reason", "").lower(), 5.0), rig.logs()
    assert rig.diag()["state"] == "holding"
    t_nan = time.monotonic()
    time.sleep(1.5)
    assert rig.chunks(LEFT, t_nan + 0.3) == [] and rig.chunks(RIGHT, t_nan + 0.3) == []
    rig.standin.send("nan off")
    t_ok = time.monotonic()
    assert wait_until(lambda: len(rig.chunks(LEFT, t_ok)) >= 2, 5.0), rig.logs()
    assert "non-finite state" not in rig.node.output()  # the policy never saw a NaN state


def test_nan_chunk_is_refused_and_never_published(rig):
    before = int(rig.diag()["chunks_rejected"])
    res = rig.obs.set_parameter(NODE, "instruction", "nan please")
    assert res.successful
    assert wait_until(lambda: int(rig.diag().get("chunks_rejected", 0)) > before, 5.0), rig.logs()
    assert "NaN" in rig.diag()["last_reject_reason"]
    for msg in rig.obs.received(LEFT) + rig.obs.received(RIGHT):
        _assert_safe(msg)
    rig.obs.set_parameter(NODE, "instruction", "open the grippers")


def test_stop_returns_to_idle(rig):
    res = rig.obs.call(Trigger, f"{NODE}/stop")
    assert res.success
    t_stop = time.monotonic()
    assert wait_until(lambda: rig.diag().get("state") == "idle", 3.0)
    time.sleep(1.0)
    assert rig.chunks(LEFT, t_stop + 0.3) == []


def test_deactivate_holds_where_commanded_and_start_is_refused(rig):
    assert rig.obs.call(Trigger, f"{NODE}/start").success
    t0 = time.monotonic()
    assert wait_until(lambda: len(rig.chunks(LEFT, t0)) >= 2 and len(rig.chunks(RIGHT, t0)) >= 2, 10.0), rig.logs()
    t_off = time.monotonic()
    assert rig.obs.lifecycle(NODE, "deactivate")
    assert rig.obs.lifecycle_state(NODE) == "inactive"

    def holds(topic):
        return [m for m in rig.obs.received(topic, t_off) if len(m.points) == 1]

    assert wait_until(lambda: holds(LEFT) and holds(RIGHT), 3.0), rig.logs()
    hold = holds(LEFT)[0]
    _assert_safe(hold)
    assert list(hold.points[0].velocities) == [0.0] * len(hold.joint_names)
    # where the running chunk had the arm at that moment: on its path (joint 0 moves along the
    # chunk; one velocity-limited step of slack for the part before its first point)
    path = [p.positions[0] for p in rig.chunks(LEFT, t0)[-1].points]
    assert min(path) - 0.07 <= hold.points[0].positions[0] <= max(path) + 0.07, (hold.points[0].positions, path)
    time.sleep(1.0)
    assert rig.chunks(LEFT, t_off + 0.3) == [] and rig.chunks(RIGHT, t_off + 0.3) == []
    assert wait_until(lambda: rig.diag().get("state") == "inactive", 3.0), rig.diag()
    res = rig.obs.call(Trigger, f"{NODE}/start")
    assert not res.success and "inactive" in res.message
    res = rig.obs.set_parameter(NODE, "embodiment", "mobile_aloha")
    assert not res.successful and "unconfigured" in res.reason


def test_cleanup_releases_and_a_failed_configure_leaves_the_node_unconfigured(rig):
    assert rig.obs.lifecycle(NODE, "cleanup")
    assert rig.obs.lifecycle_state(NODE) == "unconfigured"
    assert wait_until(lambda: rig.obs.node.count_publishers(LEFT) == 0, 5.0)  # robot interfaces gone
    assert rig.obs.set_parameter(NODE, "policy_class", "ros_helpers:NoSuchPolicy").successful
    assert not rig.obs.lifecycle(NODE, "configure")
    assert rig.obs.lifecycle_state(NODE) == "unconfigured"
    assert rig.node.popen.poll() is None, rig.logs()  # no crash
    assert wait_until(lambda: "NoSuchPolicy" in rig.diag().get("configure_error", ""), 3.0), rig.diag()
    assert rig.diag()["_level"] == 2  # ERROR, with the reason
    res = rig.obs.call(Trigger, f"{NODE}/start")
    assert not res.success and "NoSuchPolicy" in res.message
    # fixed in place: configure again, same process
    assert rig.obs.set_parameter(NODE, "policy_class", "ros_helpers:ScriptedPolicy").successful
    assert rig.obs.lifecycle(NODE, "configure") and rig.obs.lifecycle(NODE, "activate")
    t0 = time.monotonic()
    assert rig.obs.call(Trigger, f"{NODE}/start").success
    assert wait_until(lambda: len(rig.chunks(LEFT, t0)) >= 2, 10.0), rig.logs()
    assert rig.diag().get("configure_error", "") == ""


def test_mobile_base_twist_clamped_and_zero_when_stale(tmp_path):
    from geometry_msgs.msg import Twist

    env = ros_environment(tmp_path)
    standin = Proc(stand_in_cmd(embodiment="mobile_aloha"), env, tmp_path / "standin.log", stdin=True)
    node = Proc(
        policy_node_cmd(
            "instruction:=drive",
            "autostart:=true",
            embodiment="mobile_aloha",
            policy_class="ros_helpers:ScriptedMobilePolicy",
        ),
        env,
        tmp_path / "node.log",
    )
    obs = Observer("test_mobile_observer")
    obs.subscribe(Twist, "/cmd_vel")
    obs.subscribe(DiagnosticArray, "/diagnostics")
    try:
        assert obs.lifecycle(NODE, "configure") and obs.lifecycle(NODE, "activate"), node.tail()

        def moving():
            msgs = obs.received("/cmd_vel")
            return len(msgs) > 10 and msgs[-1].linear.x != 0.0

        assert wait_until(moving, 30.0), node.tail() + standin.tail(1000)
        last = obs.received("/cmd_vel")[-1]
        assert last.linear.x == pytest.approx(0.5) and last.angular.z == pytest.approx(0.3)  # clamped to 0.5
        standin.send("camera cam_high off")
        assert wait_until(lambda: "cam_high stale" in (obs.latest_diagnostics() or {}).get("hold_reason", ""), 5.0), (
            node.tail()
        )
        t_hold = time.monotonic()
        assert wait_until(lambda: len(obs.received("/cmd_vel", t_hold + 0.2)) >= 5, 3.0)
        late = obs.received("/cmd_vel", t_hold + 0.2)
        moving = [(m.linear.x, m.angular.z) for m in late if m.linear.x != 0.0 or m.angular.z != 0.0]
        assert not moving, f"the base kept moving on stale data: {moving[:5]}\n{node.tail()}"
        # driving again, then the lifecycle shutdown: zero twist, and the process ends by itself
        standin.send("camera cam_high on")

        def driving():
            return obs.received("/cmd_vel")[-1].linear.x != 0.0

        assert wait_until(driving, 10.0), node.tail()
        t_shut = time.monotonic()
        assert obs.lifecycle(NODE, "shutdown")
        assert wait_until(lambda: node.popen.poll() is not None, 15.0), node.tail()
        assert obs.received("/cmd_vel", t_shut) and not driving(), node.tail()
    finally:
        obs.close()
        codes = node.stop(), standin.stop()
    assert codes[0] == 0, node.tail()
    assert problem_lines(node.output()) == [], node.tail()
