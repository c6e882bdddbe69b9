"""A separate process that publishes sensor_msgs/Image at 20 Hz: a stand-in camera for tests.

Each image's pixels encode its sequence number, so the receiver can check content, not only
arrival. Usage: python image_publisher_proc.py TOPIC COUNT
"""

import sys
import time

import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image


def main() -> None:
    topic, count = sys.argv[1], int(sys.argv[2])
    rclpy.init()
    node = rclpy.create_node("test_image_publisher")
    pub = node.create_publisher(Image, topic, qos_profile_sensor_data)
    deadline = time.monotonic() + 20.0
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    h, w = 48, 64
    for seq in range(count):
        msg = Image()
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = f"seq{seq}"
        msg.height, msg.width, msg.encoding, msg.step = h, w, "rgb8", w * 3
        pixels = np.zeros((h, w, 3), np.uint8)
        pixels[..., 0] = seq % 256
        pixels[:, : w // 2, 1] = 255
        msg.data = pixels.tobytes()
        pub.publish(msg)
        time.sleep(0.05)
    node.destroy_node()
    rclpy.shutdown()


if __name__ == "__main__":
    main()
