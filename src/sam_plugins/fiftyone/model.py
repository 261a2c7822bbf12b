"""`SamModel`: a plain `fiftyone.core.models.Model` for `dataset.apply_model(...)`.

It uses neither `TorchModelMixin` nor `SupportsGetItem`, so FiftyOne takes its plain
per-image path and never imports torchvision. Prompts come from the sample
(`apply_model(model, label_field=..., prompt_field="detections_or_keypoints")`).
"""

from __future__ import annotations

from typing import Any

import fiftyone as fo
import fiftyone.core.models as fom
import numpy as np

from sam_plugins.batch import Segmenter, SegmentSettings
from sam_plugins.batch.records import TaskResult

from .labels import DEFAULT_POINT_LABEL_ATTR, build_task, to_label


class SamModelConfig:
    """Holds the settings of a `SamModel` (FiftyOne reads `confidence_thresh` from it)."""

    def __init__(self, confidence_thresh: float | None = None) -> None:
        self.confidence_thresh = confidence_thresh


class SamModel(fom.SamplesMixin, fom.Model):
    """SAM for `apply_model`: automatic without a prompt field, boxes for a `Detections`
    prompt field, points for a `Keypoints` prompt field. Returns `Detections` (or
    `Polylines`/`Segmentation` per `output`). `orientations` (1, 2, 4 or 8) averages each
    prompt's mask over turned and mirrored copies of the image, and `keep_prompted_region` keeps
    only the region each prompt points at (None: the model's recommendation); prompted modes only.

    Example::

        model = SamModel()  # embedded default model
        dataset.apply_model(model, label_field="sam", prompt_field="ground_truth")
    """

    def __init__(
        self,
        model: str | None = None,
        device: str | None = None,
        output: str = "detections",
        point_label_attr: str = DEFAULT_POINT_LABEL_ATTR,
        confidence_thresh: float | None = None,
        orientations: int = 1,
        keep_prompted_region: bool | None = None,
        **amg_params: Any,
    ) -> None:
        fom.SamplesMixin.__init__(self)
        self.orientations = orientations
        self.keep_prompted_region = keep_prompted_region
        self.output = output
        self.point_label_attr = point_label_attr
        self.config = SamModelConfig(confidence_thresh)
        self._base = SegmentSettings(mode="automatic", model=model, device=device, amg=dict(amg_params))
        self._segmenters: dict[str, Segmenter] = {}

    @property
    def media_type(self) -> str:
        return "image"

    @property
    def ragged_batches(self) -> bool:
        return True

    @property
    def transforms(self) -> None:
        return None

    @property
    def preprocess(self) -> bool:
        return False

    @preprocess.setter
    def preprocess(self, value: bool) -> None:
        pass

    @property
    def prompt_field(self) -> str | None:
        fields = self.needs_fields or {}
        return fields.get("prompt_field")

    def _segmenter(self, mode: str) -> Segmenter:
        """One model, shared by the mode-specific segmenters."""
        if mode not in self._segmenters:
            settings = SegmentSettings(
                **{
                    **self._base.to_dict(),
                    "mode": mode,
                    "orientations": self.orientations,
                    "keep_prompted_region": self.keep_prompted_region,
                }
            )
            loaded = next(iter(self._segmenters.values())).model if self._segmenters else None
            self._segmenters[mode] = Segmenter(settings, model=loaded)
        return self._segmenters[mode]

    def _mode_and_prompts(self, sample: fo.Sample | None) -> tuple[str, Any]:
        field = self.prompt_field
        if not field:
            return "automatic", None
        if sample is None:
            raise ValueError("prompted SAM needs the sample; call apply_model(..., prompt_field=...)")
        prompts = sample.get_field(field)
        if prompts is None or isinstance(prompts, fo.Detections):
            return "boxes", prompts
        if isinstance(prompts, fo.Keypoints):
            return "points", prompts
        raise ValueError(
            f"prompt field '{field}' holds {type(prompts).__name__}; use Detections or Keypoints"
        )

    def predict(self, arg: np.ndarray, sample: fo.Sample | None = None) -> fo.Label:
        """Segment one image (HWC uint8 from FiftyOne) with the prompts of `sample`."""
        mode, prompts = self._mode_and_prompts(sample)
        key = sample.id if sample is not None else "image"
        task = build_task(key, getattr(sample, "filepath", ""), mode, prompts, self.point_label_attr)
        seg = self._segmenter(mode)
        shape, instances = seg.segment_image(np.asarray(arg), task)
        thresh = self.config.confidence_thresh
        if thresh is not None:
            instances = [i for i in instances if min(max(i.score, 0.0), 1.0) >= thresh]
        result = TaskResult(key=key, path=task.path, shape=shape, instances=instances)
        return to_label(result, self.output)

    def predict_all(self, args: list[np.ndarray], samples: list[fo.Sample] | None = None) -> list[fo.Label]:
        samples = list(samples) if samples is not None else [None] * len(args)
        return [self.predict(arg, sample) for arg, sample in zip(args, samples, strict=True)]
