"""The FiftyOne operator `@sam-plugins/sam/segment`: a form over `sam_plugins.fiftyone.segment`."""

from __future__ import annotations

from typing import Any

import fiftyone.operators as foo
import fiftyone.operators.types as types

from sam_plugins.batch.records import MODES
from sam_plugins.models.checkpoints import PROMPT_MODES

from .api import check_label_field, default_label_field, segment
from .labels import DEFAULT_POINT_LABEL_ATTR, LABEL_TYPES, OUTPUTS, PROMPT_TYPES

PLUGIN_NAME = "@sam-plugins/sam"
OPERATOR_NAME = "segment"
OPERATOR_URI = f"{PLUGIN_NAME}/{OPERATOR_NAME}"
# Above this many samples the App proposes delegated execution by default.
DELEGATE_THRESHOLD = 25

# Automatic-mode parameters under their official names: (name, type, default, min, max, help).
# A default of None leaves the value to the model: its checkpoint's recommendation, else the
# official default (`SamAutomaticMaskGenerator.for_model`).
AMG_FORM: tuple[tuple[str, type, Any, float | None, float | None, str], ...] = (
    ("seed_sigma", float, None, 0.1, 50.0, "seeds: smoothing (pixels) before finding bright spots (2)"),
    ("seed_threshold", float, None, 0.0, 0.99, "seeds: how far above background a spot must rise (0.2)"),
    ("points_per_side", int, 32, 1, 256, "grid: points per image side"),
    ("points_per_batch", int, 64, 1, 4096, "points decoded together (memory vs. speed)"),
    (
        "pred_iou_thresh",
        float,
        None,
        0.0,
        1.0,
        "minimum predicted IoU; empty: the model's own "
        "recommendation (the official default 0.88 for official SAM)",
    ),
    (
        "stability_score_thresh",
        float,
        None,
        0.0,
        1.0,
        "minimum stability score; empty: the model's "
        "own recommendation (the official default 0.95 for official SAM)",
    ),
    ("stability_score_offset", float, 1.0, 0.0, None, "logit offset for the stability score"),
    (
        "box_nms_thresh",
        float,
        None,
        0.0,
        1.0,
        "box IoU above which duplicates are removed (grid 0.7, seeds 0.2)",
    ),
    ("crop_n_layers", int, 0, 0, 4, "extra layers of image crops (small objects)"),
    ("crop_nms_thresh", float, 0.7, 0.0, 1.0, "box NMS threshold between crops"),
    ("crop_overlap_ratio", float, 512 / 1500, 0.0, 1.0, "overlap of neighbouring crops"),
    ("crop_n_points_downscale_factor", int, 1, 1, 8, "grid reduction per crop layer"),
    (
        "min_mask_region_area",
        int,
        None,
        0,
        None,
        "remove holes/islands smaller than this (pixels; grid 0, seeds 10)",
    ),
)
AMG_DEFAULTS = {name: default for name, _t, default, *_ in AMG_FORM}


def _model_choices() -> list[str]:
    """ "default" plus every registered model name (official, plugin-provided, fine-tuned)."""
    try:
        from sam_plugins import list_models

        names = [getattr(m, "name", m) for m in list_models()]
    except Exception:  # noqa: BLE001 - the form must render even if the registry cannot be read
        names = []
    return ["default", *[n for n in names if n != "default"]]


def _model_input(inputs: types.Object, label: str, description: str) -> None:
    """The "model" text field, proposing "default" and every registered model name."""
    models = types.AutocompleteView()
    for name in _model_choices():
        models.add_choice(name, label=name)
    inputs.str("model", default="default", label=label, description=description, view=models)


def _field_choice(
    inputs: types.Object, name: str, fields: list[str], label: str, description: str, if_none: str
) -> None:
    """A required dropdown of existing `fields`, marked invalid with `if_none` when there are none."""
    choices = types.Dropdown()
    for field in fields:
        choices.add_choice(field, label=field)
    prop = inputs.enum(
        name, choices.values(), required=True, label=label, description=description, view=choices
    )
    if not fields:
        prop.invalid = True
        prop.error_message = if_none


def _fields_of(view, doc_type: type) -> list[str]:
    schema = view.get_field_schema(embedded_doc_type=doc_type)
    return sorted(schema)


class SegmentWithSam(foo.Operator):
    """Segment images with SAM: automatic, or prompted by existing boxes or keypoints."""

    @property
    def config(self) -> foo.OperatorConfig:
        return foo.OperatorConfig(
            name=OPERATOR_NAME,
            label="Segment with SAM",
            description="Segment Anything: automatic, box- or point-prompted instance masks",
            dynamic=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
        )

    # -- form -----------------------------------------------------------------------------------
    def resolve_input(self, ctx) -> types.Property:
        inputs = types.Object()
        view = ctx.target_view()
        params = ctx.params
        mode = params.get("mode", "automatic")
        inputs.view("notice", types.Notice(label=f"{view.count()} sample(s) will be segmented"))

        modes = types.RadioGroup()
        modes.add_choice("automatic", label="Automatic", description="segment everything")
        modes.add_choice("boxes", label="Box prompts", description="one mask per box of a Detections field")
        modes.add_choice("points", label="Point prompts", description="one mask per keypoint group")
        inputs.enum("mode", modes.values(), default="automatic", label="Mode", view=modes)

        if mode in PROMPT_TYPES:
            kind = PROMPT_TYPES[mode].__name__
            _field_choice(
                inputs,
                "prompt_field",
                _fields_of(view, PROMPT_TYPES[mode]),
                "Prompt field",
                f"an existing {kind} field",
                f"this dataset has no {kind} field",
            )
            if mode == "points":
                inputs.str(
                    "point_label_attr",
                    default=DEFAULT_POINT_LABEL_ATTR,
                    label="Point label attribute",
                    description="per-point attribute: 1 = positive, 0 = negative (all positive if absent)",
                )
            turns = types.RadioGroup()
            turns.add_choice(1, label="1", description="the image as it is (fastest; official SAM)")
            turns.add_choice(4, label="4", description="also mirrored: 4x the encoder time")
            turns.add_choice(8, label="8", description="also turned: 8x the encoder time, sharpest masks")
            inputs.enum(
                "orientations",
                turns.values(),
                default=1,
                label="Orientations averaged",
                description="each mask is the average over turned and mirrored copies of the image",
                view=turns,
            )
            pieces = types.RadioGroup()
            pieces.add_choice(
                "model", label="as the model recommends", description="on for the embedded model"
            )
            pieces.add_choice(
                "on", label="on", description="drop stray fragments; a box's mask stays in the box"
            )
            pieces.add_choice("off", label="off", description="the masks as the model gives them")
            inputs.enum(
                "one_object",
                pieces.values(),
                default="model",
                label="One object per prompt",
                description="keep only the part of each mask that its prompt points at",
                view=pieces,
            )

        outputs = types.RadioGroup()
        outputs.add_choice("detections", label="Detections with instance masks")
        outputs.add_choice("segmentation", label="Segmentation (instance label image)")
        outputs.add_choice("polylines", label="Polylines")
        inputs.enum("output", outputs.values(), default="detections", label="Output", view=outputs)
        output = params.get("output", "detections")

        existing = types.AutocompleteView()
        for name in _fields_of(view, LABEL_TYPES.get(output, LABEL_TYPES["detections"])):
            existing.add_choice(name, label=name)
        label_field = params.get("label_field") or default_label_field(mode)
        field_prop = inputs.str(
            "label_field",
            default=default_label_field(mode),
            label="Label field",
            view=existing,
        )
        inputs.bool("overwrite", default=False, label="Overwrite existing labels")
        inputs.bool("skip_existing", default=False, label="Skip samples already labelled (resume)")
        try:
            check_label_field(
                ctx.dataset,
                label_field,
                output if output in OUTPUTS else "detections",
                bool(params.get("overwrite")),
                bool(params.get("skip_existing")),
            )
        except ValueError as err:
            field_prop.invalid = True
            field_prop.error_message = str(err)

        _model_input(inputs, "Model", "embedded default, a registered model name, or a checkpoint path")
        inputs.str(
            "mask_dir",
            label="Mask directory (optional)",
            description="store every mask as a PNG file here (large masks go to disk anyway)",
        )

        if mode == "automatic":
            inputs.view("amg_header", types.Header(label="Automatic mask generator", divider=True))
            prompts = types.RadioGroup()
            prompts.add_choice("model", label="What the model recommends")
            prompts.add_choice("seeds", label="One point per bright object (cells, nuclei)")
            prompts.add_choice("grid", label="Point grid (SAM's segment everything)")
            inputs.enum("prompts", prompts.values(), default="model", label="Prompts", view=prompts)
            for name, kind, default, lo, hi, help_text in AMG_FORM:
                add = inputs.int if kind is int else inputs.float
                add(name, default=default, min=lo, max=hi, label=name, description=help_text)
        return types.Property(inputs, view=types.View(label="Segment with SAM"))

    def resolve_execution_options(self, ctx) -> foo.ExecutionOptions:
        big = ctx.target_view().count() > DELEGATE_THRESHOLD
        return foo.ExecutionOptions(
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            default_choice_to_delegated=big,
        )

    # -- run ------------------------------------------------------------------------------------
    def execute(self, ctx) -> dict[str, Any]:
        params = ctx.params
        mode = params.get("mode", "automatic")
        amg = {}
        if mode == "automatic":
            amg = {name: params[name] for name in AMG_DEFAULTS if params.get(name) is not None}
            if params.get("prompts") in PROMPT_MODES:  # "model" (or absent): the model's recommendation
                amg["prompts"] = params["prompts"]
            for name, value in AMG_DEFAULTS.items():
                if value is not None:
                    amg.setdefault(name, value)
        model = params.get("model") or None
        view = ctx.target_view()

        def progress(done: int, total: int | None) -> None:
            if total:
                ctx.set_progress(progress=done / total, label=f"{done}/{total}")

        report = segment(
            view,
            mode=mode,
            label_field=params.get("label_field") or default_label_field(mode),
            prompt_field=params.get("prompt_field"),
            output=params.get("output", "detections"),
            overwrite=bool(params.get("overwrite", False)),
            skip_existing=bool(params.get("skip_existing", False)),
            model=None if model == "default" else model,
            mask_dir=params.get("mask_dir") or None,
            point_label_attr=params.get("point_label_attr") or DEFAULT_POINT_LABEL_ATTR,
            progress=progress,
            orientations=int(params.get("orientations") or 1) if mode in PROMPT_TYPES else 1,
            keep_prompted_region={"on": True, "off": False}.get(params.get("one_object") or "model"),
            **amg,
        )
        if not ctx.delegated:
            ctx.trigger("reload_dataset")
        return report

    def resolve_output(self, ctx) -> types.Property:
        outputs = types.Object()
        for name, label in (
            ("label_field", "Label field"),
            ("processed", "Samples processed"),
            ("succeeded", "Succeeded"),
            ("failed", "Failed"),
            ("skipped_existing", "Skipped (already labelled)"),
            ("instances", "Objects"),
            ("run_key", "Run key (provenance)"),
        ):
            outputs.str(name, label=label)
        outputs.obj("failures", label="Failures (sample id: error)", view=types.JSONView())
        return types.Property(outputs, view=types.View(label="SAM segmentation finished"))

    # -- Python convenience -----------------------------------------------------------------------
    def __call__(
        self,
        sample_collection,
        mode: str = "automatic",
        delegate: bool = False,
        **params: Any,
    ):
        """Run the operator on a collection (`delegate=True` queues it for a delegated executor)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        ctx = {"view": sample_collection.view(), "params": {"mode": mode, **params}}
        return foo.execute_operator(self.uri, ctx, request_delegation=delegate)


def register(plugin) -> None:
    """Register this package's operators with a FiftyOne plugin context."""
    from .finetune_operator import FinetuneSam

    plugin.register(SegmentWithSam)
    plugin.register(FinetuneSam)
