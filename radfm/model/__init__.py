"""The RadFM model: building blocks (ViT3D, resampler), the composed model, the factory and checkpoints."""

from radfm.model.config import LMConfig, RadFMConfig, ResamplerConfig, TokenizerConfig, VisionConfig
from radfm.model.multimodal import RadFMModel
from radfm.model.tokenizer import RadFMTokenizer

__all__ = ["LMConfig", "RadFMConfig", "RadFMModel", "RadFMTokenizer", "ResamplerConfig", "TokenizerConfig",
           "VisionConfig"]
