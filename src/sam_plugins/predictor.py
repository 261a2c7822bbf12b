"""SamPredictor: compute an image embedding once, then predict masks from prompts.

Same API and outputs as the official ``segment_anything.SamPredictor`` (so existing code runs by
changing the import), plus: microscopy input through :func:`sam_plugins.images.prepare_image`,
input validation with clear errors, embedding export/import (:meth:`SamPredictor.get_embedding`,
:meth:`SamPredictor.set_image_embedding`), and, where the model's checkpoint recommends it, one
object per prompt (:func:`sam_plugins.regions.keep_prompted_region`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from .embeddings import ImageEmbedding, image_hash, model_fingerprint
from .images import prepare_image
from .modeling import Sam
from .modeling.fast_decoder import postprocess_masks as fast_postprocess
from .regions import keep_prompted_region as _keep_prompted_region

__all__ = ["ResizeLongestSide", "SamPredictor"]


class ResizeLongestSide:
    """Resize images (Pillow bilinear on uint8, as official) and coordinates to a longest side."""

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) uint8 -> resized (h, w, C) uint8, bit-identical to the official transform."""
        h, w = self.get_preprocess_shape(image.shape[0], image.shape[1], self.target_length)
        return np.array(Image.fromarray(np.ascontiguousarray(image)).resize((w, h), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = np.array(coords, dtype=float, copy=True)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        return self.apply_coords(np.asarray(boxes).reshape(-1, 2, 2), original_size).reshape(-1, 4)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) float -> resized; antialiased bilinear (close to, not equal to, apply_image)."""
        size = self.get_preprocess_shape(image.shape[2], image.shape[3], self.target_length)
        return F.interpolate(image, size, mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        old_h, old_w = original_size
        new_h, new_w = self.get_preprocess_shape(old_h, old_w, self.target_length)
        coords = coords.clone().to(torch.float)
        coords[..., 0] = coords[..., 0] * (new_w / old_w)
        coords[..., 1] = coords[..., 1] * (new_h / old_h)
        return coords

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple[int, ...]) -> torch.Tensor:
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        scale = long_side_length * 1.0 / max(oldh, oldw)
        return int(oldh * scale + 0.5), int(oldw * scale + 0.5)


class SamPredictor:
    """Predict masks for one image from point, box and mask prompts (official SAM semantics).

    ``keep_prompted_region``: each binary mask from :meth:`predict` is cut to the box prompt (grown
    by 5 %) and keeps only its connected region under a positive point (else its largest), dropping
    stray fragments. None (default) = what the model's checkpoint recommends
    (`model.predictor_settings`; off for the official models).
    """

    def __init__(self, sam_model: Sam, keep_prompted_region: bool | None = None) -> None:
        self.model = sam_model
        if keep_prompted_region is None:
            settings = getattr(sam_model, "predictor_settings", None) or {}
            keep_prompted_region = bool(settings.get("keep_prompted_region", False))
        self.keep_prompted_region = keep_prompted_region
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self.reset_image()

    # ------------------------------------------------------------------ image / embedding
    def set_image(
        self,
        image: np.ndarray,
        image_format: str = "RGB",
        *,
        channel: int | None = None,
        channel_axis: int | None = None,
    ) -> None:
        """Compute the embedding of ``image``.

        RGB ``uint8`` (H, W, 3) images are used as is (official behaviour); grayscale, 16-bit,
        float, RGBA and multichannel images are converted by :func:`prepare_image`.
        """
        image = self._model_rgb(image, image_format, channel, channel_axis)
        input_image = self.transform.apply_image(image)
        input_image_torch = torch.as_tensor(input_image, device=self.device)
        input_image_torch = input_image_torch.permute(2, 0, 1).contiguous()[None, :, :, :]
        self.set_torch_image(input_image_torch, image.shape[:2])
        self._image_hash = image_hash(image)

    def _model_rgb(
        self, image: np.ndarray, image_format: str, channel: int | None, channel_axis: int | None
    ) -> np.ndarray:
        """``image`` as (H, W, 3) uint8 in the model's channel order."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}.")
        image = prepare_image(image, channel=channel, channel_axis=channel_axis)
        return image[..., ::-1] if image_format != self.model.image_format else image

    @torch.no_grad()
    def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]) -> None:
        """Compute the embedding of an image already resized with :class:`ResizeLongestSide` (1x3xHxW)."""
        size = self.model.image_encoder.img_size
        if not (
            transformed_image.ndim == 4
            and transformed_image.shape[1] == 3
            and max(*transformed_image.shape[2:]) == size
        ):
            raise ValueError(
                f"set_torch_image input must be BCHW with 3 channels and long side {size}, "
                f"got shape {tuple(transformed_image.shape)}."
            )
        self.reset_image()
        self.original_size = tuple(int(s) for s in original_image_size)
        self.input_size = tuple(int(s) for s in transformed_image.shape[-2:])
        self.features, self.high_res_features = self.model.encode(self.model.preprocess(transformed_image))
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """The embedding of the current image, (1, C, h, w)."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        return self.features

    def get_embedding(self) -> ImageEmbedding:
        """The current embedding with its size bookkeeping, ready to save or to set again later."""
        features = self.get_image_embedding()
        high_res = self.high_res_features
        return ImageEmbedding(
            features=features.detach().cpu().float(),
            high_res=None if high_res is None else [f.detach().cpu().float() for f in high_res],
            original_size=self.original_size,
            input_size=self.input_size,
            model_fingerprint=model_fingerprint(self.model),
            image_hash=self._image_hash or "",
        )

    def set_image_embedding(self, embedding: ImageEmbedding, check_model: bool = True) -> None:
        """Use a previously computed embedding (e.g. loaded from disk) instead of running the encoder."""
        if not isinstance(embedding, ImageEmbedding):
            raise TypeError(f"Expected an ImageEmbedding, got {type(embedding).__name__}.")
        enc = self.model.image_encoder
        pe = self.model.prompt_encoder
        expected = (1, pe.embed_dim, *pe.image_embedding_size)
        if tuple(embedding.features.shape) != expected:
            raise ValueError(
                f"Embedding shape {tuple(embedding.features.shape)} does not fit this model "
                f"(expected {expected})."
            )
        if not torch.isfinite(embedding.features).all():
            raise ValueError("The embedding contains NaN or infinite values.")
        self._check_high_res(embedding)
        want_input = ResizeLongestSide.get_preprocess_shape(*embedding.original_size, enc.img_size)
        if tuple(embedding.input_size) != want_input:
            raise ValueError(
                f"Embedding input_size {embedding.input_size} is inconsistent with original_size "
                f"{embedding.original_size} for a {enc.img_size}-px model (expected {want_input})."
            )
        if (
            check_model
            and embedding.model_fingerprint
            and embedding.model_fingerprint != model_fingerprint(self.model)
        ):
            raise ValueError(
                "The embedding was computed with a different model (fingerprint mismatch); "
                "recompute it, or pass check_model=False to use it anyway."
            )
        self.reset_image()
        self.original_size = tuple(embedding.original_size)
        self.input_size = tuple(embedding.input_size)
        dtype = self.model.pixel_mean.dtype
        self.features = embedding.features.to(device=self.device, dtype=dtype)
        if embedding.high_res is not None:
            self.high_res_features = [f.to(device=self.device, dtype=dtype) for f in embedding.high_res]
        self._image_hash = embedding.image_hash or None
        self.is_image_set = True

    def _check_high_res(self, embedding: ImageEmbedding) -> None:
        """The embedding's high-res features must match the model's high-res path (or both be absent)."""
        path = self.model.high_res_encoder
        if path is None:
            if embedding.high_res is not None:
                raise ValueError(
                    "The embedding has high-resolution features but this model has no high-res path; "
                    "it was computed with another model: recompute it."
                )
            return
        if embedding.high_res is None:
            raise ValueError(
                "This model needs the high-resolution features too, but the embedding has only the "
                "encoder output (saved by an older version or another model): recompute it."
            )
        expected = path.feature_shapes(self.model.image_encoder.img_size)
        shapes = [tuple(f.shape) for f in embedding.high_res]
        if shapes != expected:
            raise ValueError(f"High-res feature shapes {shapes} do not fit this model (expected {expected}).")
        if not all(torch.isfinite(f).all() for f in embedding.high_res):
            raise ValueError("The embedding's high-res features contain NaN or infinite values.")

    # ------------------------------------------------------------------ prompts
    def _check_points(self, point_coords: Any, point_labels: Any) -> tuple[np.ndarray, np.ndarray]:
        coords = np.asarray(point_coords, dtype=float)
        if coords.ndim == 1 and coords.shape == (2,):
            coords = coords[None]
        if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0:
            raise ValueError(f"point_coords must have shape (N, 2) as (x, y) pixels, got {coords.shape}.")
        if point_labels is None:
            raise ValueError(
                "point_labels must be supplied if point_coords is supplied (1 = foreground, 0 = background)."
            )
        labels = np.asarray(point_labels)
        if labels.ndim != 1 or len(labels) != len(coords):
            raise ValueError(
                f"point_labels must have one label per point: {len(coords)} points but labels of shape "
                f"{labels.shape}."
            )
        if not np.isin(labels, (-1, 0, 1)).all():
            raise ValueError(
                f"point_labels must be 1 (foreground), 0 (background) or -1 (ignore), got {labels}."
            )
        if not np.isfinite(coords).all():
            raise ValueError("point_coords contain NaN or infinite values.")
        self._check_inside(coords, "point")
        return coords, labels

    def _check_inside(self, coords: np.ndarray, what: str) -> None:
        h, w = self.original_size
        outside = (coords[:, 0] < 0) | (coords[:, 0] > w) | (coords[:, 1] < 0) | (coords[:, 1] > h)
        if outside.any():
            raise ValueError(
                f"{what} coordinates {coords[outside].tolist()} lie outside the image "
                f"(x in [0, {w}], y in [0, {h}]); coordinates are (x, y) in pixels of the original image."
            )

    def _check_box(self, box: Any) -> np.ndarray:
        box = np.asarray(box, dtype=float)
        if box.size != 4:
            raise ValueError(f"box must be 4 numbers (x0, y0, x1, y1), got shape {box.shape}.")
        box = box.reshape(4)
        if not np.isfinite(box).all():
            raise ValueError("box contains NaN or infinite values.")
        if box[2] < box[0] or box[3] < box[1]:
            raise ValueError(f"box must be (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1, got {box.tolist()}.")
        self._check_inside(box.reshape(2, 2), "box")
        return box

    def _check_mask_input(self, mask_input: Any) -> np.ndarray:
        mask = np.asarray(mask_input, dtype=np.float32)
        size = tuple(self.model.prompt_encoder.mask_input_size)
        if mask.ndim == 2:
            mask = mask[None]
        if mask.shape != (1, *size):
            raise ValueError(
                f"mask_input must have shape (1, {size[0]}, {size[1]}) (the low-res logits of a previous "
                f"prediction), got {mask.shape}."
            )
        if not np.isfinite(mask).all():
            raise ValueError("mask_input contains NaN or infinite values.")
        return mask

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks (C, H, W), IoU predictions (C,) and low-res logits (C, h, w) for one prompt set.

        With ``keep_prompted_region`` on, binary masks keep only their prompted region; logits
        (``return_logits=True``) are returned as the model gave them.
        """
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        coords_torch = labels_torch = box_torch = mask_input_torch = None
        if point_coords is not None:
            coords, labels = self._check_points(point_coords, point_labels)
            coords = self.transform.apply_coords(coords, self.original_size)
            coords_torch = torch.as_tensor(coords, dtype=torch.float, device=self.device)[None, :, :]
            labels_torch = torch.as_tensor(labels, dtype=torch.int, device=self.device)[None, :]
        elif point_labels is not None:
            raise ValueError("point_labels were given without point_coords.")
        if box is not None:
            resized_box = self.transform.apply_boxes(self._check_box(box), self.original_size)
            box_torch = torch.as_tensor(resized_box, dtype=torch.float, device=self.device)[None, :]
        if mask_input is not None:
            mask = self._check_mask_input(mask_input)
            mask_input_torch = torch.as_tensor(mask, dtype=torch.float, device=self.device)[None, :, :, :]
        masks, iou_predictions, low_res_masks = self.predict_torch(
            coords_torch,
            labels_torch,
            box_torch,
            mask_input_torch,
            multimask_output,
            return_logits=return_logits,
        )
        masks_np = masks[0].detach().cpu().numpy()
        if self.keep_prompted_region and not return_logits:
            masks_np = _keep_prompted_region(masks_np, point_coords, point_labels, box)
        return masks_np, iou_predictions[0].detach().cpu().numpy(), low_res_masks[0].detach().cpu().numpy()

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
        """Batched prompts already in the resized frame: points (B, N, 2) + labels (B, N), boxes (B, 4),
        mask_input (B, 1, h, w). Returns masks (B, C, H, W), IoU (B, C), low-res logits (B, C, h, w)."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        batch = [t.shape[0] for t in (point_coords, boxes, mask_input) if t is not None]
        if len(set(batch)) > 1:
            raise ValueError(f"Prompt batch sizes differ: {batch} (points, boxes, mask_input).")
        if point_coords is not None:
            if point_labels is None or point_labels.shape != point_coords.shape[:2]:
                raise ValueError(
                    f"point_labels must have shape {tuple(point_coords.shape[:2])}, got "
                    f"{None if point_labels is None else tuple(point_labels.shape)}."
                )
            points = (point_coords, point_labels)
        else:
            points = None
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        low_res_masks, iou_predictions = self.model.mask_decoder(
            image_embeddings=self.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            high_res_features=self.high_res_features,
        )
        img_size = self.model.image_encoder.img_size
        if self.model.mask_decoder.uses_fast_path():
            # the same two bilinear resizes, composed per axis into a few weighted rows (~1e-6 relative)
            masks = fast_postprocess(low_res_masks, img_size, self.input_size, self.original_size)
        else:
            masks = self.model.postprocess_masks(low_res_masks, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou_predictions, low_res_masks

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        """Forget the current image."""
        self.is_image_set = False
        self.features = None
        self.high_res_features: list[torch.Tensor] | None = None
        self.orig_h = None
        self.orig_w = None
        self.input_h = None
        self.input_w = None
        self.original_size: tuple[int, ...] | None = None
        self.input_size: tuple[int, ...] | None = None
        self._image_hash: str | None = None
