"""The FiftyOne operator `@sam-plugins/sam/finetune`: a form over `sam_plugins.fiftyone.finetune`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from sam_plugins.training.finetuning import FINETUNE_DEFAULTS

from .operators import _field_choice, _fields_of, _model_input
from .training import TRAINING_TYPES, finetune

OPERATOR_NAME = "finetune"
DEFAULT_STEPS = FINETUNE_DEFAULTS["steps"]  # as sam-plugins finetune and sam_plugins.finetune


def _training_fields(view) -> list[str]:
    return sorted({name for kind in TRAINING_TYPES for name in _fields_of(view, kind)})


def check_out(out: str | None, overwrite: bool) -> str | None:
    """Why ``out`` cannot be written (None when it can)."""
    if not out:
        return "give the checkpoint file to write, e.g. /data/models/nuclei.pt"
    path = Path(out).expanduser()
    if path.is_dir():
        return f"{path} is a folder; give a file name such as {path / 'model.pt'}"
    if path.exists() and not overwrite:
        return f"{path} exists; choose another name or tick 'Overwrite'"
    return None


class FinetuneSam(foo.Operator):
    """Fine-tune SAM on the instance masks of a label field; writes a checkpoint file."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name=OPERATOR_NAME,
            label="Fine-tune SAM on labelled samples",
            description="Train a SAM model on the instance masks of a label field (minutes to hours)",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    def resolve_input(self, ctx) -> types.Property:
        inputs = types.Object()
        view = ctx.target_view()
        params = ctx.params
        inputs.view(
            "notice",
            types.Notice(label=f"{view.count()} sample(s); those with objects in the label field are used"),
        )
        _field_choice(
            inputs,
            "label_field",
            _training_fields(view),
            "Label field",
            "Detections with instance masks, filled Polylines, or an instance Segmentation",
            "this dataset has no Detections, Polylines or Segmentation field",
        )
        _model_input(
            inputs, "Start from", "the embedded default, a registered model name, or a checkpoint path"
        )
        inputs.int("steps", default=DEFAULT_STEPS, min=1, label="Steps", description="of 2 crops x 8 objects")
        inputs.float(
            "time_limit_min",
            default=0.0,
            min=0.0,
            label="Time limit (minutes)",
            description="0: run all the steps; else stop after this long, the learning rate decayed to fit",
        )
        inputs.bool(
            "freeze_encoder",
            default=False,
            label="Train the mask decoder only",
            description="faster, a smaller gain",
        )
        out = inputs.str(
            "out", required=True, label="Checkpoint file", description="where the fine-tuned model is written"
        )
        inputs.bool("overwrite", default=False, label="Overwrite an existing checkpoint file")
        problem = check_out(params.get("out"), bool(params.get("overwrite")))
        if problem and params.get("out"):
            out.invalid = True
            out.error_message = problem
        return types.Property(inputs, view=types.View(label="Fine-tune SAM"))

    def resolve_execution_options(self, ctx) -> foo.ExecutionOptions:
        return foo.ExecutionOptions(
            allow_immediate_execution=True, allow_delegated_execution=True, default_choice_to_delegated=True
        )

    def execute(self, ctx) -> dict[str, Any]:
        params = ctx.params
        problem = check_out(params.get("out"), bool(params.get("overwrite")))
        if problem:
            raise ValueError(problem)

        def progress(done: int, total: int, numbers: dict[str, float]) -> None:
            ctx.set_progress(progress=done / total, label=f"step {done}/{total}, loss {numbers['loss']:.3f}")

        report = finetune(
            ctx.target_view(),
            params["label_field"],
            Path(params["out"]).expanduser(),
            params.get("model") or "default",
            steps=int(params.get("steps") or DEFAULT_STEPS),
            overwrite=bool(params.get("overwrite")),
            freeze_encoder=bool(params.get("freeze_encoder")),
            time_limit_s=60.0 * float(params.get("time_limit_min") or 0.0),
            progress=progress,
        )
        return report

    def resolve_output(self, ctx) -> types.Property:
        outputs = types.Object()
        for name, label in (
            ("checkpoint", "Checkpoint (use it as the model of Segment with SAM)"),
            ("samples", "Samples trained on"),
            ("objects", "Objects"),
            ("steps", "Steps"),
            ("val_point_miou", "Held-out objects: one click, mean IoU"),
            ("val_box_miou", "Held-out objects: box, mean IoU"),
        ):
            outputs.str(name, label=label)
        return types.Property(outputs, view=types.View(label="Fine-tuning finished"))
