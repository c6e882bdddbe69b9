"""The ROS subcommands of `ki-vla`: run, command, replay, eval-bag.

Each is ``*_main(argv) -> exit code``. ROS modules are imported inside the functions, so
``eval-bag`` (offline, no DDS) works where rclpy is not installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ki_vla_ros.control.policy_loader import BACKENDS


def default_params_file() -> Path:
    from ki_vla_ros.embodiment import share_dir

    return share_dir() / "config" / "ros" / "policy_node.yaml"


# ------------------------------------------------------------------------------------- run


def run_main(argv: list[str]) -> int:
    """`ki-vla run --embodiment NAME`: the policy node in this process, with the parameters the
    launch files give it (the params YAML, then these overrides), configured and activated (exit
    code 1 with the reason when configure fails) unless --no-activate leaves that to a lifecycle
    manager."""
    ap = argparse.ArgumentParser(prog="ki-vla run", description="Run the policy node (without ros2 launch).")
    ap.add_argument(
        "--embodiment", default="aloha_bimanual", help="name in config/embodiments/ or a YAML path"
    )
    ap.add_argument("--model", default="", help="model folder (default: the embodiment's)")
    ap.add_argument("--backend", default="torch", choices=BACKENDS,
                    help="auto: the fastest path checked for the model's weights on this CPU [torch]")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16", "int8"],
                    help="what the backend computes in; other than fp32 once `ki-vla export --precision` has "
                         "checked it on the model folder [auto]")
    ap.add_argument(
        "--policy-class", default="", help="custom policy 'module:Class' (hook for your own policy)"
    )
    ap.add_argument("--instruction", default="", help="initial instruction")
    ap.add_argument("--autostart", action="store_true", help="start as soon as an instruction is set")
    ap.add_argument("--namespace", default="", help="ROS namespace of the node")
    ap.add_argument("--node-name", default="policy_node")
    ap.add_argument("--use-sim-time", action="store_true", help="follow /clock")
    ap.add_argument("--no-activate", action="store_true",
                    help="leave the node unconfigured, for a lifecycle manager (ros2 lifecycle set ... configure)")
    ap.add_argument(
        "--params-file", default=None, help="ROS params YAML (default: config/ros/policy_node.yaml)"
    )
    ap.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="extra parameter override, as in --ros-args -p (repeatable)",
    )
    opts = ap.parse_args(argv)

    from ki_vla_ros.ros.policy_node import EXECUTOR_THREADS, STARTUP_ERRORS, PolicyNode
    from ki_vla_ros.ros.spin import exit_process, run_node

    params_file = Path(opts.params_file) if opts.params_file else default_params_file()
    ros_args = ["--ros-args"]
    if params_file.is_file():
        ros_args += ["--params-file", str(params_file)]
    elif opts.params_file:
        print(f"ki-vla run: params file not found: {params_file}", file=sys.stderr)
        return 2
    strings = {"embodiment": opts.embodiment, "model": opts.model, "backend": opts.backend,
               "precision": opts.precision, "policy_class": opts.policy_class}
    if opts.instruction:
        strings["instruction"] = opts.instruction
    for k, v in strings.items():  # JSON quoting keeps '' and 'true' strings (values are YAML)
        ros_args += ["-p", f"{k}:={json.dumps(v)}"]
    ros_args += ["-p", f"use_sim_time:={str(opts.use_sim_time).lower()}",
                 "-p", f"autostart:={str(opts.autostart).lower()}"]
    for p in opts.param:
        ros_args += ["-p", p]
    exit_process(run_node(lambda: PolicyNode(opts.node_name, namespace=opts.namespace), "ki-vla run",
                          ["ki-vla", *ros_args], STARTUP_ERRORS, num_threads=EXECUTOR_THREADS,
                          start=None if opts.no_activate else PolicyNode.configure_and_activate))


# --------------------------------------------------------------------------------- command


def command_main(argv: list[str]) -> int:
    """`ki-vla command "TEXT" [--start] | --start | --stop`: set the node's instruction through its
    parameter service and start / stop it, on machines without the ros2 CLI."""
    ap = argparse.ArgumentParser(
        prog="ki-vla command", description="Send a language command to a running policy node."
    )
    ap.add_argument("instruction", nargs="?", help="the instruction (sets the 'instruction' parameter)")
    ap.add_argument("--node", default="/policy_node", help="the policy node's full name [/policy_node]")
    ap.add_argument("--start", action="store_true", help="call ~/start after setting the instruction")
    ap.add_argument("--stop", action="store_true", help="call ~/stop")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the node's services")
    opts = ap.parse_args(argv)
    if opts.instruction is None and not (opts.start or opts.stop):
        ap.error("give an instruction, --start or --stop")

    import rclpy
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    from std_srvs.srv import Trigger

    node_name = opts.node if opts.node.startswith("/") else "/" + opts.node
    rclpy.init(args=None)
    node = rclpy.create_node("ki_vla_command")
    try:

        def call(srv_type, name, request):
            client = node.create_client(srv_type, name)
            if not client.wait_for_service(timeout_sec=opts.timeout):
                raise TimeoutError(
                    f"service {name} not available after {opts.timeout:g} s (is the node running?)"
                )
            future = client.call_async(request)
            rclpy.spin_until_future_complete(node, future, timeout_sec=opts.timeout)
            if not future.done():
                raise TimeoutError(f"service {name} did not answer within {opts.timeout:g} s")
            return future.result()

        try:
            if opts.stop:
                res = call(Trigger, f"{node_name}/stop", Trigger.Request())
                print(f"stop: {res.message}")
            if opts.instruction is not None:
                req = SetParameters.Request(
                    parameters=[
                        Parameter("instruction", Parameter.Type.STRING, opts.instruction).to_parameter_msg()
                    ]
                )
                result = call(SetParameters, f"{node_name}/set_parameters", req).results[0]
                if not result.successful:
                    print(f"instruction refused: {result.reason}", file=sys.stderr)
                    return 1
                print(f"instruction set: {opts.instruction!r}")
            if opts.start:
                res = call(Trigger, f"{node_name}/start", Trigger.Request())
                if not res.success:
                    print(f"start refused: {res.message}", file=sys.stderr)
                    return 1
                print(f"start: {res.message}")
        except TimeoutError as exc:
            print(f"ki-vla command: {exc}", file=sys.stderr)
            return 2
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


# ---------------------------------------------------------------------------------- replay


def _msg_class(msgtype: str):
    import importlib

    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


def replay_main(argv: list[str]) -> int:
    """`ki-vla replay BAG`: publish a rosbag2 (sqlite3 or mcap) into ROS 2 topics with the
    recorded timing."""
    ap = argparse.ArgumentParser(
        prog="ki-vla replay", description="Publish a rosbag2 with its recorded timing."
    )
    ap.add_argument("bag", help="rosbag2 folder (sqlite3 or mcap)")
    ap.add_argument("--rate", type=float, default=1.0, help="playback rate factor [1.0]")
    ap.add_argument(
        "--clock", action="store_true", help="publish /clock with the bag's time (for use_sim_time)"
    )
    ap.add_argument("--topics", nargs="+", help="only these topics")
    ap.add_argument("--loop", action="store_true", help="play again and again")
    ap.add_argument(
        "--wait-subscribers",
        type=float,
        default=0.0,
        metavar="S",
        help="wait up to S seconds until every topic has a subscriber before playing",
    )
    opts = ap.parse_args(argv)
    if opts.rate <= 0:
        ap.error("--rate must be > 0")

    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message
    from rosgraph_msgs.msg import Clock

    from ki_vla_ros.bagio import bag_topics, iter_raw

    try:
        topics = [t for t in bag_topics(opts.bag) if not opts.topics or t.topic in opts.topics]
    except (FileNotFoundError, OSError, ValueError) as exc:
        print(f"ki-vla replay: {exc}", file=sys.stderr)
        return 1
    if opts.clock:
        topics = [t for t in topics if t.topic != "/clock"]
    rclpy.init(args=None)
    node = rclpy.create_node("ki_vla_replay")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    try:
        pubs, classes = {}, {}
        for t in topics:
            try:
                classes[t.topic] = _msg_class(t.msgtype)
            except (ImportError, AttributeError, ValueError):
                print(
                    f"ki-vla replay: skipping {t.topic}: message type {t.msgtype} not installed",
                    file=sys.stderr,
                )
                continue
            pubs[t.topic] = node.create_publisher(classes[t.topic], t.topic, qos)
        clock_pub = node.create_publisher(Clock, "/clock", qos) if opts.clock else None
        if opts.wait_subscribers > 0:
            deadline = time.monotonic() + opts.wait_subscribers
            while time.monotonic() < deadline and any(p.get_subscription_count() == 0 for p in pubs.values()):
                time.sleep(0.05)

        def publish_clock(t_ns: int):
            if clock_pub is not None:
                msg = Clock()
                msg.clock.sec, msg.clock.nanosec = t_ns // 1_000_000_000, t_ns % 1_000_000_000
                clock_pub.publish(msg)

        count = 0
        while True:
            wall0 = bag0 = None
            for topic, _msgtype, t_ns, raw in iter_raw(opts.bag, list(pubs)):
                if bag0 is None:
                    wall0, bag0 = time.monotonic(), t_ns
                target = wall0 + (t_ns - bag0) * 1e-9 / opts.rate
                while (remaining := target - time.monotonic()) > 0:
                    time.sleep(min(remaining, 0.01))
                    publish_clock(bag0 + int((time.monotonic() - wall0) * opts.rate * 1e9))
                publish_clock(t_ns)
                pubs[topic].publish(deserialize_message(raw, classes[topic]))
                count += 1
            if not opts.loop or bag0 is None:
                break
        print(f"replayed {count} messages from {opts.bag}")
        time.sleep(0.2)  # let the last messages leave before the participant goes
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


# -------------------------------------------------------------------------------- eval-bag


def eval_bag_main(argv: list[str]) -> int:
    """`ki-vla eval-bag BAG --model DIR`: the policy over a bag's observations, offline (no DDS):
    action error against the recorded commands and the latency distribution."""
    ap = argparse.ArgumentParser(prog="ki-vla eval-bag", description=eval_bag_main.__doc__.split(":")[0])
    ap.add_argument("bag")
    ap.add_argument("--model", default="", help="model folder (default: the embodiment's)")
    ap.add_argument("--embodiment", default="aloha_bimanual")
    ap.add_argument("--backend", default="torch", choices=BACKENDS,
                    help="auto: the fastest path checked for the model's weights on this CPU [torch]")
    ap.add_argument("--policy-class", default="", help="custom policy 'module:Class'")
    ap.add_argument("--num-steps", type=int, default=0, help="flow-matching steps [0: the model folder's]")
    ap.add_argument("--instruction", default=None,
                    help="the instruction to give the policy (default: the bag's first /instruction message)")
    ap.add_argument("--stride", type=float, default=None, help="seconds between evaluated observations")
    ap.add_argument("--max-samples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the report as JSON to this file")
    opts = ap.parse_args(argv)

    from ki_vla_ros.bagio import first_string
    from ki_vla_ros.configio import ConfigError
    from ki_vla_ros.control.eval_bag import evaluate_bag, format_report
    from ki_vla_ros.control.policy_loader import load_policy
    from ki_vla_ros.embodiment import load_embodiment, resolve_model_dir

    try:
        instruction = opts.instruction if opts.instruction is not None else first_string(opts.bag)
        if not instruction:
            raise ValueError(f"{opts.bag}: no /instruction message in the bag; pass --instruction")
        emb = load_embodiment(opts.embodiment)
        model_dir = resolve_model_dir(opts.model, emb)
        policy = load_policy(
            model_dir, backend=opts.backend, num_steps=opts.num_steps, policy_class=opts.policy_class
        )
        report = evaluate_bag(
            opts.bag,
            policy,
            emb,
            instruction,
            stride_s=opts.stride,
            max_samples=opts.max_samples,
            seed=opts.seed,
        )
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"ki-vla eval-bag: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    if opts.json:
        Path(opts.json).write_text(json.dumps(report, indent=2))
    return 0


__all__ = ["run_main", "command_main", "replay_main", "eval_bag_main"]
