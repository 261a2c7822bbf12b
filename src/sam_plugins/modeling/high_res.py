"""Optional high-resolution image features for the mask decoder's upscaling (not in official SAM).

SAM's decoder draws every mask outline from the 16-px patch tokens: the upscaling from the token
grid (stride 16) to the low-res logits (stride 4) sees no image pixels. SAM 2 adds backbone features
at strides 8 and 4 to the two upscaling steps; a plain ViT has no such stages, so here a small
convolutional net reads them from the (normalised, padded) input image. Its output projections start
at zero, so a model that gains this path starts with exactly its old outputs.
"""

from __future__ import annotations

import torch
from torch import nn


class HighResEncoder(nn.Module):
    """Image -> [features at stride 4, features at stride 8], sized for the decoder's upscaling.

    ``channels`` (c0, c1, c2): widths of the stride-2, stride-4 and stride-8 convolution levels.
    ``out_chans`` (stride-4 output, stride-8 output): the channels of the decoder's second and first
    upscaling step (``transformer_dim // 8`` and ``transformer_dim // 4``).
    """

    def __init__(
        self,
        channels: tuple[int, int, int],
        out_chans: tuple[int, int],
        in_chans: int = 3,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"high_res_channels needs 3 widths (strides 2, 4, 8), got {channels}")
        c0, c1, c2 = channels

        def conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
            layer = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")  # keeps the scale through GELUs
            nn.init.zeros_(layer.bias)
            return [layer, activation()]

        self.stride2 = nn.Sequential(*conv(in_chans, c0, 2))
        self.stride4 = nn.Sequential(*conv(c0, c1, 2), *conv(c1, c1, 1))
        self.stride8 = nn.Sequential(*conv(c1, c2, 2), *conv(c2, c2, 1))
        self.proj_s4 = nn.Conv2d(c1, out_chans[0], 1)
        self.proj_s8 = nn.Conv2d(c2, out_chans[1], 1)
        for proj in (self.proj_s4, self.proj_s8):  # start as a no-op on the decoder
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def feature_shapes(self, image_size: int) -> list[tuple[int, int, int, int]]:
        """Shapes of the two outputs for one padded input of side ``image_size``."""
        return [
            (1, self.proj_s4.out_channels, image_size // 4, image_size // 4),
            (1, self.proj_s8.out_channels, image_size // 8, image_size // 8),
        ]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: the preprocessed input (B, 3, S, S). Returns [(B, out0, S/4, S/4), (B, out1, S/8, S/8)]."""
        s4 = self.stride4(self.stride2(x))
        s8 = self.stride8(s4)
        return [self.proj_s4(s4), self.proj_s8(s8)]
