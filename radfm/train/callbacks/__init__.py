"""Stages that run before or around the fit, as Lightning callbacks configured under ``conf/callbacks/``."""

from radfm.train.callbacks.progress import TrainProgress
from radfm.train.callbacks.vision_warmup import VisionWarmup

__all__ = ["TrainProgress", "VisionWarmup"]
