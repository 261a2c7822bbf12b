"""The Segment Anything Model: image encoder + prompt encoder + mask decoder."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .high_res import HighResEncoder
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder


class Sam(nn.Module):
    """Predicts object masks from an image and input prompts (official SAM semantics)."""

    mask_threshold: float = 0.0
    image_format: str = "RGB"

    def __init__(
        self,
        image_encoder: ImageEncoderViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53),
        pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375),
        high_res_encoder: HighResEncoder | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        # optional, not in official SAM: image features at strides 4 and 8 for the decoder's upscaling
        self.high_res_encoder = high_res_encoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        #: Automatic-mask-generator settings this model's checkpoint recommends (e.g. thresholds
        #: matched to its IoU head); empty for the official models, whose defaults are the official ones.
        self.generator_settings: dict[str, Any] = {}
        #: `SamPredictor` settings this model's checkpoint recommends (e.g. keep_prompted_region);
        #: empty for the official models, so their predictor outputs stay the official ones.
        self.predictor_settings: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def encode(self, input_images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Preprocessed images (B, 3, S, S) -> image embeddings and the high-res features (or None)."""
        embeddings = self.image_encoder(input_images)
        if self.high_res_encoder is None:
            return embeddings, None
        return embeddings, self.high_res_encoder(input_images)

    @torch.no_grad()
    def forward(
        self, batched_input: list[dict[str, Any]], multimask_output: bool
    ) -> list[dict[str, torch.Tensor]]:
        """End-to-end prediction for a list of images, each with its own prompts.

        Each dict holds 'image' (3, H, W) already resized so the long side equals the model input
        size, 'original_size' (H, W), and optionally 'point_coords' (B, N, 2), 'point_labels' (B, N),
        'boxes' (B, 4) and 'mask_inputs' (B, 1, 4h, 4w), all in the resized frame.
        Returns per image 'masks' (B, C, H, W) bool, 'iou_predictions' (B, C), 'low_res_logits'.
        """
        input_images = torch.stack([self.preprocess(x["image"]) for x in batched_input], dim=0)
        image_embeddings, high_res = self.encode(input_images)
        outputs = []
        for i, (record, embedding) in enumerate(zip(batched_input, image_embeddings, strict=True)):
            points = None
            if "point_coords" in record:
                points = (record["point_coords"], record["point_labels"])
            sparse, dense = self.prompt_encoder(
                points=points, boxes=record.get("boxes"), masks=record.get("mask_inputs")
            )
            low_res_masks, iou_predictions = self.mask_decoder(
                image_embeddings=embedding.unsqueeze(0),
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
                high_res_features=None if high_res is None else [f[i : i + 1] for f in high_res],
            )
            masks = self.postprocess_masks(
                low_res_masks, input_size=record["image"].shape[-2:], original_size=record["original_size"]
            )
            outputs.append(
                {
                    "masks": masks > self.mask_threshold,
                    "iou_predictions": iou_predictions,
                    "low_res_logits": low_res_masks,
                }
            )
        return outputs

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Upscale low-res logits to the padded input, crop the padding, resize to the original size."""
        size = self.image_encoder.img_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise pixel values with the ImageNet mean/std, then zero-pad to a square input."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        size = self.image_encoder.img_size
        return F.pad(x, (0, size - w, 0, size - h))
