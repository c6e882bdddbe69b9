"""The policy node's sensor intake (ki_vla_ros/ros/intake.py): messages wait in DDS queues on a
node nobody spins and are taken on demand: the newest with its reception age (the policy node),
or all of them in order (the demo's recorder)."""

import time

import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from rclpy.serialization import deserialize_message  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402

from ki_vla_ros.ros.intake import SensorIntake  # noqa: E402

pytestmark = pytest.mark.dds


@pytest.fixture
def rig(ros_env):
    """(publisher node, intake) on a context of their own."""
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    pub_node = rclpy.create_node("intake_test_publisher", context=ctx)
    intake = SensorIntake(ctx, "_intake_test")
    try:
        yield pub_node, intake
    finally:
        intake.close()
        pub_node.destroy_node()
        ctx.try_shutdown()


def wait_for_subscriber(pub, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)


def test_take_returns_the_newest_message_with_its_age(rig):
    pub_node, intake = rig
    pub = pub_node.create_publisher(JointState, "/intake_test/joint_states", qos_profile_sensor_data)
    intake.add("js", JointState, "/intake_test/joint_states", qos_profile_sensor_data)
    intake.add("silent", JointState, "/intake_test/nobody", qos_profile_sensor_data)
    wait_for_subscriber(pub)
    assert intake.take() == {}
    for i in range(8):  # more than the sensor-data queue depth (5): only the newest matters
        pub.publish(JointState(name=["a"], position=[float(i)]))
        time.sleep(0.005)
    time.sleep(0.3)
    taken = intake.take()
    assert set(taken) == {"js"}  # nothing from a topic without messages
    assert list(deserialize_message(taken["js"].raw, JointState).position) == [7.0]
    assert 0.25 <= taken["js"].age_s < 5.0  # received about 0.3 s ago (wall clock)
    assert intake.take() == {}  # taken: nothing new since


def test_drain_returns_every_queued_message_oldest_first(rig):
    """What the demo's recorder relies on: up to the QoS depth, nothing is lost between drains."""
    pub_node, intake = rig
    pub = pub_node.create_publisher(JointState, "/intake_test/drained", 50)
    deep = QoSProfile(depth=40, reliability=ReliabilityPolicy.BEST_EFFORT)
    intake.add("js", JointState, "/intake_test/drained", deep)
    wait_for_subscriber(pub)
    for i in range(30):
        pub.publish(JointState(name=["a"], position=[float(i)]))
        time.sleep(0.002)
    time.sleep(0.3)
    got = intake.drain()["js"]
    assert [deserialize_message(t.raw, JointState).position[0] for t in got] == [float(i) for i in range(30)]
    assert intake.drain() == {"js": []}
