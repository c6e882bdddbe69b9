"""Run time: the model folder, cached inference behind torch / ONNX Runtime / TensorRT backends."""

from ki_vla_ros.runtime.backends import BACKENDS, BackendError
from ki_vla_ros.runtime.model_dir import Layout, ModelDirError, load_model_dir, save_model_dir
from ki_vla_ros.runtime.policy import Policy
from ki_vla_ros.runtime.types import Observation, PolicyOutput

__all__ = ["BACKENDS", "BackendError", "Layout", "ModelDirError", "Observation", "Policy", "PolicyOutput",
           "load_model_dir", "save_model_dir"]
