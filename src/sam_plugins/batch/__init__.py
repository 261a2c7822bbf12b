"""Engine-agnostic batch labeling: tasks → workers (model loaded once) → compact results → writer.

Engines: `"local"` (in-process, the default) and `"ray"` (`pip install 'sam-plugins[ray]'`).
Front ends (FiftyOne, the folder CLI) only build `Task`s and write `TaskResult`s.
"""

from .pipeline import BatchSummary, Engine, LocalEngine, make_engine, run_batch
from .records import Instance, Task, TaskResult, decode_rle, encode_rle, label_image
from .worker import AMG_PARAMETERS, Segmenter, SegmentSettings

__all__ = [
    "AMG_PARAMETERS",
    "BatchSummary",
    "Engine",
    "Instance",
    "LocalEngine",
    "Segmenter",
    "SegmentSettings",
    "Task",
    "TaskResult",
    "decode_rle",
    "encode_rle",
    "label_image",
    "make_engine",
    "run_batch",
]
