"""A dense auxiliary task for training from scratch: foreground and boundary maps from the embedding.

Prompted objects give the image encoder a training signal only where objects were prompted. A
small head that predicts, from the image embedding, which pixels belong to any object and which
lie on an object's boundary gives every pixel of every image a signal, which makes a from-scratch
encoder learn faster. The head is used only during training and is not part of the saved model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from skimage.segmentation import find_boundaries
from torch import nn
from torch.nn import functional as F

from ..modeling.common import LayerNorm2d


class DenseAuxHead(nn.Module):
    """(B, C, h, w) image embedding -> (B, 2, 4h, 4w) logits of foreground and boundary."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.ConvTranspose2d(embed_dim, embed_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(embed_dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(embed_dim // 4, embed_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
            nn.Conv2d(embed_dim // 8, 2, kernel_size=1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding)


def dense_targets(labels: np.ndarray, size: int) -> torch.Tensor:
    """(2, size, size) soft targets: the fraction of each cell that is foreground / boundary."""
    fg = labels > 0
    edge = find_boundaries(labels, mode="inner") & fg
    maps = torch.from_numpy(np.stack([fg, edge]).astype(np.float32))[None]
    factor = labels.shape[-1] // size
    return F.avg_pool2d(maps, factor)[0] if factor > 1 else maps[0]


def dense_aux_loss(
    head: DenseAuxHead, embeddings: torch.Tensor, labels: Sequence[np.ndarray]
) -> torch.Tensor:
    """Binary cross-entropy of the foreground and boundary maps, averaged over pixels and maps."""
    logits = head(embeddings).float()  # the loss in fp32, also under bf16 autocast
    target = torch.stack([dense_targets(lab, logits.shape[-1]) for lab in labels]).to(logits.device)
    return F.binary_cross_entropy_with_logits(logits, target)
