"""A robot stand-in: publishes an embodiment's cameras and joint states, and follows its commands.

For tests, demos and bring-up without hardware or simulator. Cameras publish synthetic RGB images
(a moving gradient, at the configured size; JPEG for compressed cameras) with sensor-data QoS;
JointState topics publish the joints of each state source. With ``--follow`` (default) the
joints follow the commands the policy node sends (joint trajectories interpolated over time,
group positions taken as they come); otherwise they stay at their start positions.

Run time control on stdin, one command a line (for tests): ``camera NAME off|on``,
``nan on|off`` (joint states carry NaN), ``state off|on``, ``quit``.

Usage: camera_publisher [--embodiment NAME] [--rate HZ] [--camera-rate HZ] [--no-follow]
       [--image-size H W] [--nan] [ROS args]
"""

from __future__ import annotations

import argparse
import sys
import threading

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from ki_vla_ros.embodiment import load_embodiment
from ki_vla_ros.ros.conversions import duration_to_seconds, rgb_to_image


class RobotStandIn(Node):
    def __init__(
        self,
        embodiment: str,
        rate: float = 50.0,
        camera_rate: float = 20.0,
        follow: bool = True,
        image_size: tuple[int, int] | None = None,
        nan: bool = False,
    ):
        super().__init__("robot_stand_in")
        self.emb = load_embodiment(embodiment)
        names = self.emb.state_names
        lim = self.emb.limits.joints
        self.q = np.array([np.clip(0.0, lim[n].lower, lim[n].upper) if n in lim else 0.0 for n in names])
        self.index = {n: i for i, n in enumerate(names)}
        self.nan = nan
        self.camera_on = {c.name: True for c in self.emb.cameras}
        self.state_on = True
        self.lock = threading.Lock()
        self.trajs: dict[str, tuple[float, JointTrajectory, np.ndarray]] = {}
        self.cam_pubs = []
        for c in self.emb.cameras:
            t = Image if c.message == "raw" else CompressedImage
            size = image_size or tuple(c.image_size)
            self.cam_pubs.append((c, self.create_publisher(t, c.topic, qos_profile_sensor_data), size))
        self.state_pubs = [(s, self.create_publisher(JointState, s.topic, 10)) for s in self.emb.state]
        if follow:
            for o in self.emb.outputs:
                if o.type == "joint_trajectory":
                    self.create_subscription(JointTrajectory, o.topic, self._on_traj(o.name), 10)
                elif o.type == "joint_group_position":
                    self.create_subscription(Float64MultiArray, o.topic, self._on_group(o.joints), 10)
        self.frame = 0
        self.create_timer(1.0 / rate, self._tick_state)
        self.create_timer(1.0 / camera_rate, self._tick_cameras)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_traj(self, name):
        def cb(msg):
            with self.lock:
                start = np.array([self.q[self.index[j]] for j in msg.joint_names])
                self.trajs[name] = (self._now(), msg, start)

        return cb

    def _on_group(self, joints):
        def cb(msg):
            with self.lock:
                for j, v in zip(joints, msg.data):
                    self.q[self.index[j]] = v

        return cb

    def _follow(self) -> None:
        now = self._now()
        for t0, msg, start in self.trajs.values():
            if not msg.points:
                continue
            times = np.array([0.0] + [duration_to_seconds(p.time_from_start) for p in msg.points])
            pos = np.vstack([start[None]] + [np.array(p.positions)[None] for p in msg.points])
            for k, j in enumerate(msg.joint_names):
                self.q[self.index[j]] = np.interp(now - t0, times, pos[:, k])

    def _tick_state(self) -> None:
        if not self.state_on:
            return
        stamp = self.get_clock().now().to_msg()
        with self.lock:
            self._follow()
            q = self.q.copy()
        for src, pub in self.state_pubs:
            msg = JointState()
            msg.header.stamp = stamp
            msg.name = list(src.joints)
            msg.position = [float("nan") if self.nan else float(q[self.index[j]]) for j in src.joints]
            msg.velocity = [0.0] * len(src.joints)
            pub.publish(msg)

    def _tick_cameras(self) -> None:
        self.frame += 1
        stamp = self.get_clock().now().to_msg()
        for i, (c, pub, (h, w)) in enumerate(self.cam_pubs):
            if not self.camera_on[c.name]:
                continue
            img = np.empty((h, w, 3), np.uint8)
            img[..., 0] = (np.arange(w)[None, :] + self.frame * 4) % 256
            img[..., 1] = (np.arange(h)[:, None] * 2) % 256
            img[..., 2] = (60 * i) % 256
            if c.message == "raw":
                pub.publish(rgb_to_image(img, stamp, c.name))
            else:
                import cv2

                ok, buf = cv2.imencode(".jpg", img[..., ::-1])
                msg = CompressedImage(format="jpeg", data=buf.tobytes())
                msg.header.stamp, msg.header.frame_id = stamp, c.name
                pub.publish(msg)

    def command(self, line: str) -> bool:
        """Apply one stdin control line; False for quit."""
        parts = line.split()
        if not parts:
            return True
        if parts[0] == "quit":
            return False
        if parts[0] == "camera" and len(parts) == 3 and parts[1] in self.camera_on:
            self.camera_on[parts[1]] = parts[2] == "on"
        elif parts[0] == "nan" and len(parts) == 2:
            self.nan = parts[1] == "on"
        elif parts[0] == "state" and len(parts) == 2:
            self.state_on = parts[1] == "on"
        else:
            self.get_logger().warning(f"unknown command {line!r}")
        return True


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = rclpy.utilities.remove_ros_args(["x"] + argv)[1:]
    ap = argparse.ArgumentParser(prog="camera_publisher", description=__doc__.split("\n")[0])
    ap.add_argument("--embodiment", default="aloha_bimanual")
    ap.add_argument("--rate", type=float, default=50.0, help="joint state rate (Hz)")
    ap.add_argument("--camera-rate", type=float, default=20.0)
    ap.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"))
    ap.add_argument("--no-follow", action="store_true")
    ap.add_argument("--nan", action="store_true", help="publish NaN joint positions")
    ap.add_argument("--stdin", action="store_true", help="read control commands from stdin")
    opts = ap.parse_args(ros_args)
    rclpy.init(args=argv)
    node = RobotStandIn(
        opts.embodiment,
        opts.rate,
        opts.camera_rate,
        not opts.no_follow,
        tuple(opts.image_size) if opts.image_size else None,
        opts.nan,
    )
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    if opts.stdin:

        def read_stdin():
            for line in sys.stdin:
                if not node.command(line):
                    break
            executor.wake()
            rclpy.try_shutdown()

        threading.Thread(target=read_stdin, daemon=True).start()
    print("robot stand-in ready", flush=True)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():  # an invalid context after SIGINT is a normal shutdown
            raise
    finally:
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
