"""Predict masks from prompts in several orientations of the image and average them.

`OrientationAveragingPredictor` shows the encoder the image turned and mirrored (up to the 8
orientations of a square: 4 rotations x mirror), asks each orientation for the same prompt moved
along with it, turns each answer back and averages the mask logits and IoU predictions
(test-time augmentation). The image embedding costs one encoder pass per orientation; each prompt
one decoder pass per orientation. For the embedded cell model it raises box-prompt mean IoU
(docs/models.md, "Averaging orientations"); its API is `SamPredictor`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .embeddings import ImageEmbedding
from .modeling import Sam
from .predictor import SamPredictor

__all__ = ["ORIENTATION_CHOICES", "Orientation", "OrientationAveragingPredictor", "orientations"]

ORIENTATION_CHOICES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Orientation:
    """Transpose (swap x and y) first, then mirror left-right (`flip_x`) and top-bottom (`flip_y`)."""

    transpose: bool = False
    flip_x: bool = False
    flip_y: bool = False

    def image(self, a: np.ndarray) -> np.ndarray:
        """(H, W, ...) array in this orientation."""
        if self.transpose:
            a = np.swapaxes(a, 0, 1)
        if self.flip_x:
            a = a[:, ::-1]
        if self.flip_y:
            a = a[::-1]
        return np.ascontiguousarray(a)

    def back(self, t: torch.Tensor) -> torch.Tensor:
        """(..., h, w) maps in this orientation turned back to the image's."""
        dims = [d for d, f in ((-1, self.flip_x), (-2, self.flip_y)) if f]
        if dims:
            t = torch.flip(t, dims)
        return t.transpose(-1, -2) if self.transpose else t

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """(..., h, w) maps of the image turned into this orientation (inverse of `back`)."""
        if self.transpose:
            t = t.transpose(-1, -2)
        dims = [d for d, f in ((-1, self.flip_x), (-2, self.flip_y)) if f]
        return torch.flip(t, dims) if dims else t

    def points(self, xy: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(..., 2) pixel coordinates (x, y) of an image of `size` (H, W), in this orientation."""
        h, w = size
        x, y = xy[..., 0], xy[..., 1]
        if self.transpose:
            x, y, h, w = y, x, w, h
        if self.flip_x:
            x = (w - 1) - x
        if self.flip_y:
            y = (h - 1) - y
        return torch.stack([x, y], dim=-1)

    def size(self, size: tuple[int, int]) -> tuple[int, int]:
        return (size[1], size[0]) if self.transpose else (size[0], size[1])


def orientations(count: int) -> list[Orientation]:
    """The first `count` orientations: 1 (as is), 2 (+ turned 180 degrees), 4 (+ the two
    mirror images) or 8 (+ the quarter turns and diagonal mirrors)."""
    if isinstance(count, bool) or count not in ORIENTATION_CHOICES:
        raise ValueError(f"orientations must be one of {ORIENTATION_CHOICES}, got {count!r}")
    flips = [
        Orientation(),
        Orientation(flip_x=True, flip_y=True),
        Orientation(flip_x=True),
        Orientation(flip_y=True),
    ]
    turned = [
        Orientation(True, fx, fy) for fx, fy in ((False, False), (True, True), (True, False), (False, True))
    ]
    return (flips + turned)[:count]


_orientations = orientations  # the constructor's argument of that name hides the function


class OrientationAveragingPredictor(SamPredictor):
    """`SamPredictor` whose masks are the average over `orientations` turned/mirrored copies of the image.

    ``orientations``: 1, 2, 4 or 8 (default 8). Prompts, masks and low-res logits are in the
    original image's frame, as with `SamPredictor`; scores are the mean predicted IoU.
    ``keep_prompted_region`` as in `SamPredictor` (applied to the averaged masks).
    """

    def __init__(
        self, sam_model: Sam, orientations: int = 8, keep_prompted_region: bool | None = None
    ) -> None:
        self.views = _orientations(orientations)
        self.predictors = [SamPredictor(sam_model, keep_prompted_region=False) for _ in self.views]
        super().__init__(sam_model, keep_prompted_region)

    @property
    def orientations(self) -> int:
        return len(self.views)

    def reset_image(self) -> None:
        """Forget the current image (in every orientation)."""
        super().reset_image()
        for predictor in getattr(self, "predictors", []):
            predictor.reset_image()

    def set_image(
        self,
        image: np.ndarray,
        image_format: str = "RGB",
        *,
        channel: int | None = None,
        channel_axis: int | None = None,
    ) -> None:
        """Compute the embedding of ``image`` in each orientation (one encoder pass each)."""
        rgb = self._model_rgb(image, image_format, channel, channel_axis)
        self.reset_image()
        for view, predictor in zip(self.views, self.predictors, strict=True):
            predictor.set_image(view.image(rgb), self.model.image_format)
        self._follow_first()

    def get_embeddings(self) -> list[ImageEmbedding]:
        """The embedding of the image in each orientation, to store and set again later."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) to get its embeddings.")
        return [predictor.get_embedding() for predictor in self.predictors]

    def set_image_embeddings(self, embeddings: list[ImageEmbedding], check_model: bool = True) -> None:
        """Use embeddings from `get_embeddings` (one per orientation, in its order) instead of the encoder."""
        if len(embeddings) != len(self.views):
            raise ValueError(
                f"got {len(embeddings)} embeddings for {len(self.views)} orientations; give the list "
                "get_embeddings() returned for this number of orientations"
            )
        size = tuple(embeddings[0].original_size)
        for view, embedding in zip(self.views, embeddings, strict=True):
            if tuple(embedding.original_size) != view.size(size):
                raise ValueError(
                    f"embedding of size {tuple(embedding.original_size)} does not fit orientation {view} "
                    f"of a {size} image; give the list get_embeddings() returned, in its order"
                )
        self.reset_image()
        for predictor, embedding in zip(self.predictors, embeddings, strict=True):
            predictor.set_image_embedding(embedding, check_model=check_model)
        self._follow_first()

    def _follow_first(self) -> None:
        """Sizes and image hash of the first orientation (the image as is): this predictor's."""
        first = self.predictors[0]
        self.original_size, self.input_size = first.original_size, first.input_size
        self._image_hash = first._image_hash
        self.is_image_set = True

    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        raise NotImplementedError(_ONE_EMBEDDING)

    def get_image_embedding(self) -> torch.Tensor:
        raise NotImplementedError(_ONE_EMBEDDING)

    def get_embedding(self) -> ImageEmbedding:
        raise NotImplementedError(_ONE_EMBEDDING)

    def set_image_embedding(self, embedding: ImageEmbedding, check_model: bool = True) -> None:
        raise NotImplementedError(_ONE_EMBEDDING)

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As `SamPredictor.predict_torch` (prompts in the resized frame of the original image),
        averaged over the orientations."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        to_pixels = self._input_to_pixels()
        masks_sum = iou_sum = low_sum = None
        plain_low = None  # the first orientation is the image as is
        for view, predictor in zip(self.views, self.predictors, strict=True):
            coords = boxes_v = mask_v = None
            if point_coords is not None:
                coords = self._to_view(view, predictor, point_coords * to_pixels)
            if boxes is not None:
                corners = self._to_view(view, predictor, boxes.reshape(-1, 2, 2) * to_pixels)
                boxes_v = torch.cat([corners.amin(dim=1), corners.amax(dim=1)], dim=-1)
            if mask_input is not None:
                mask_v = self._low_res(
                    mask_input, self.input_size, predictor.input_size, view.forward, mask_input
                )
            masks, iou, low = predictor.predict_torch(
                coords, point_labels, boxes_v, mask_v, multimask_output, return_logits=True
            )
            plain_low = low if plain_low is None else plain_low
            masks = view.back(masks)
            low = self._low_res(low, predictor.input_size, self.input_size, view.back, plain_low)
            masks_sum = masks if masks_sum is None else masks_sum + masks
            iou_sum = iou if iou_sum is None else iou_sum + iou
            low_sum = low if low_sum is None else low_sum + low
        n = len(self.views)
        masks, iou, low = masks_sum / n, iou_sum / n, low_sum / n
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low

    # ------------------------------------------------------------------ frames
    def _input_to_pixels(self) -> torch.Tensor:
        """Factors from the resized frame back to original pixels, (x, y)."""
        (h, w), (ih, iw) = self.original_size, self.input_size
        return torch.tensor([w / iw, h / ih], dtype=torch.float, device=self.device)

    def _to_view(self, view: Orientation, predictor: SamPredictor, xy: torch.Tensor) -> torch.Tensor:
        """Original-image pixel coordinates -> the resized frame of `predictor`'s oriented image."""
        oriented = view.points(xy, self.original_size)
        return predictor.transform.apply_coords_torch(oriented, predictor.original_size)

    def _low_res(
        self,
        low: torch.Tensor,
        from_input: tuple[int, ...],
        to_input: tuple[int, ...],
        turn: Any,
        padding: torch.Tensor,
    ) -> torch.Tensor:
        """Low-res logits (B, C, s, s) over one padded input -> the other orientation's canvas.

        Only the part covering the image (the input size / 4, rounded up) is turned; the padding
        stays at the bottom and right, as the encoder's input has it, with the values of
        `padding` (the same canvas as is), so one orientation gives exactly `SamPredictor`'s."""
        side = self.model.image_encoder.img_size
        scale = low.shape[-1] / side
        fh, fw = (math.ceil(s * scale) for s in from_input)
        th, tw = (math.ceil(s * scale) for s in to_input)
        turned = turn(low[..., :fh, :fw])
        out = padding.clone()
        out[..., :th, :tw] = turned[..., :th, :tw]
        return out


_ONE_EMBEDDING = (
    "an OrientationAveragingPredictor holds one embedding per orientation: use get_embeddings() / "
    "set_image_embeddings(...), or set_image(...)"
)
