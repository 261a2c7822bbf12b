"""The Segment Anything network, one module per part."""

from .common import LayerNorm2d, MLPBlock
from .high_res import HighResEncoder
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .transformer import TwoWayTransformer

__all__ = [
    "HighResEncoder",
    "ImageEncoderViT",
    "LayerNorm2d",
    "MLPBlock",
    "MaskDecoder",
    "PromptEncoder",
    "Sam",
    "TwoWayTransformer",
]
