"""Real rclpy over real DDS: images published by another process arrive in this one."""

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

HERE = Path(__file__).parent


@pytest.mark.dds
def test_images_cross_process(ros_env, python_exe):
    rclpy.init()
    node = rclpy.create_node("test_image_receiver")
    received = []
    node.create_subscription(Image, "/test_cam/image_raw", received.append, qos_profile_sensor_data)
    proc = subprocess.Popen(
        [python_exe, str(HERE / "image_publisher_proc.py"), "/test_cam/image_raw", "60"],
        env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 30.0
        while proc.poll() is None and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        for _ in range(20):  # drain what is still queued
            rclpy.spin_once(node, timeout_sec=0.05)
        out = proc.communicate(timeout=10)[0]
        assert proc.returncode == 0, out
    finally:
        if proc.poll() is None:
            proc.kill()
        node.destroy_node()
        rclpy.shutdown()

    assert len(received) >= 30, f"only {len(received)} of 60 images arrived"
    seqs = [int(m.header.frame_id[3:]) for m in received]
    assert seqs == sorted(seqs), "images arrived out of order"
    for msg, seq in zip(received, seqs):
        assert (msg.height, msg.width, msg.encoding) == (48, 64, "rgb8")
        pixels = np.frombuffer(bytes(msg.data), np.uint8).reshape(48, 64, 3)
        assert (pixels[..., 0] == seq % 256).all()
        assert pixels[0, 0, 1] == 255 and pixels[0, -1, 1] == 0
