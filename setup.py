"""ament_python package ki_vla_ros: installs the Python package, launch files, configs and models."""

import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "ki_vla_ros"


def share_tree(folder):
    """(install dir, files) pairs for every file under `folder`, keeping its layout in share/."""
    pairs = []
    for dirpath, _dirs, files in os.walk(folder):
        files = [os.path.join(dirpath, f) for f in sorted(files) if not f.startswith(".")]
        if files:
            pairs.append((os.path.join("share", PACKAGE, dirpath), files))
    return pairs


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=[PACKAGE, PACKAGE + ".*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.launch.py")),
        *share_tree("config"),
        *share_tree("models"),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="ki_vla_ros maintainers",
    description="Knowledge-insulated VLA policies: training, export and ROS 2 deployment.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "ki-vla = ki_vla_ros.cli:main",
            "policy_node = ki_vla_ros.ros.policy_node:main",
            "camera_publisher = ki_vla_ros.ros.camera_publisher:main",
            "sim_node = ki_vla_ros.ros.sim_node:main",
        ],
    },
)
