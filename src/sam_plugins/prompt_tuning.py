"""Choose a model's `SamPredictor` settings on labelled images (`sam-plugins tune`).

Every labelled object of at least `min_area` pixels is prompted twice, as a user would: one
positive click at its centre (the interior pixel farthest from the background; the best-scored of
the three masks) and its tight box. Each mask is scored by IoU with the label, as the model gives
it and with `keep_prompted_region` (one connected region per prompt, inside the box). The setting
is recommended when it lowers neither mean and raises at least one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np

from .modeling import Sam
from .predictor import SamPredictor
from .regions import keep_prompted_region
from .volumes import mask_iou, prompts_from_mask


@dataclass(frozen=True)
class PromptScores:
    """Mean IoU with the labels of click and box masks, without and with `keep_prompted_region`."""

    objects: int
    click: float
    box: float
    click_kept: float
    box_kept: float

    @property
    def keep_prompted_region(self) -> bool:
        """True when keeping the prompted region loses on neither prompt and gains on one."""
        no_loss = self.click_kept >= self.click and self.box_kept >= self.box
        return no_loss and (self.click_kept > self.click or self.box_kept > self.box)

    def to_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "keep_prompted_region": self.keep_prompted_region}


def score_prompts(
    model: Sam,
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    channel: int | None = None,
    min_area: int = 30,
    progress: Callable[[int], None] | None = None,
) -> PromptScores:
    """Click and box mean IoU over every object of `pairs` ((image, instance labels), 2-D)."""
    predictor = SamPredictor(model, keep_prompted_region=False)
    sums = np.zeros(4)
    objects = 0
    for n, (image, labels) in enumerate(pairs, start=1):
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"labels of image {n} must be 2-D, got shape {labels.shape}")
        predictor.set_image(image, channel=channel)
        ids, areas = np.unique(labels[labels > 0], return_counts=True)
        for i in ids[areas >= min_area]:
            truth = labels == i
            sums += _object_scores(predictor, truth)
            objects += 1
        if progress is not None:
            progress(n)
    if objects == 0:
        raise ValueError(f"no labelled object of at least {min_area} pixels to score the prompts on")
    click, box, click_kept, box_kept = (float(v) for v in sums / objects)
    return PromptScores(objects, click, box, click_kept, box_kept)


def _object_scores(predictor: SamPredictor, truth: np.ndarray) -> np.ndarray:
    """[click IoU, box IoU, click IoU kept, box IoU kept] for one labelled object."""
    point = prompts_from_mask(truth, "point")
    masks, scores, _ = predictor.predict(point["point_coords"], point["point_labels"])
    click = masks[int(np.argmax(scores))]
    ys, xs = np.nonzero(truth)
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
    box_mask = predictor.predict(box=box, multimask_output=False)[0][0]
    click_kept = keep_prompted_region(click, point["point_coords"], point["point_labels"])
    return np.array(
        [
            mask_iou(click, truth),
            mask_iou(box_mask, truth),
            mask_iou(click_kept, truth),
            mask_iou(keep_prompted_region(box_mask, box=box), truth),
        ]
    )
