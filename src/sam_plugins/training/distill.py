"""Self-distillation from a model's own average over image orientations.

Averaging a model's masks over turned and mirrored copies of the image
(`sam_plugins.OrientationAveragingPredictor`) makes them better than the model's single pass
(docs/models.md). `OrientationTeacher` computes that average during training, for the first
prompt of each object, with a frozen copy of the starting weights, so the model can be trained
towards it (`TrainConfig.distill_orientations`, `distill_weight`) and keep one encoder pass at use.
The whole square model input is turned: train on images that fill it (`crop_size` = the image side).
"""

from __future__ import annotations

import copy

import torch
from torch.nn import functional as F

from ..orientations import orientations


class OrientationTeacher:
    """A frozen copy of `model` whose low-res mask logits are averaged over `count` orientations."""

    def __init__(self, model: torch.nn.Module, count: int) -> None:
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.mask_decoder.fast_inference = False  # the plain path, which runs under bf16 autocast
        self.views = orientations(count)

    @torch.no_grad()
    def logits(
        self,
        images: torch.Tensor,
        index: torch.Tensor,
        coords: torch.Tensor | None,
        labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_in: torch.Tensor | None,
    ) -> torch.Tensor:
        """Averaged logits of all mask outputs, (N, 1 + multimask, h, w), for one prompt per object.

        `images` (B, 3, S, S) model inputs; `index` (N,) the image of each object; prompts in input
        pixels as the decoder takes them (points (N, P, 2) + labels, boxes (N, 4), masks (N, 1, h, w)).
        """
        model = self.model
        size = tuple(images.shape[-2:])
        total = None
        for view in self.views:
            embeddings, high_res = model.encode(model.preprocess(view.forward(images)))
            high_res = None if high_res is None else [f[index] for f in high_res]
            points = boxes_v = masks_v = None
            if coords is not None:
                points = (view.points(coords.float(), size), labels)
            if boxes is not None:
                corners = view.points(boxes.float().reshape(-1, 2, 2), size)
                boxes_v = torch.cat([corners.amin(dim=1), corners.amax(dim=1)], dim=-1)
            if mask_in is not None:
                masks_v = view.forward(mask_in)
            sparse, dense = model.prompt_encoder(points, boxes_v, masks_v)
            logits, _ = model.mask_decoder.predict_masks(
                embeddings[index],
                model.prompt_encoder.get_dense_pe(),
                sparse,
                dense,
                high_res_features=high_res,
            )
            logits = view.back(logits.float())
            total = logits if total is None else total + logits
        return total / len(self.views)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the student's logits against the teacher's probabilities, per pixel."""
    return F.binary_cross_entropy_with_logits(student.float(), torch.sigmoid(teacher))
