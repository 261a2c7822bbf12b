"""Make the screenshots of docs/napari.md with the real widget (run under Xvfb or a desktop).

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/napari_screenshots.py [--model tiny]

Every step is what a user does: open the sample, click cells, commit, segment everything,
propagate through the 3-D sample. `--model tiny` uses the random-weight test model (checks the
script, masks are meaningless); a name or checkpoint file uses that model; the default is the
embedded model.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "images"


def wait(widget, timeout: float = 600) -> None:
    from qtpy.QtWidgets import QApplication

    start = time.time()
    while widget.job is not None and time.time() - start < timeout:
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        QApplication.processEvents()


def shot(viewer, name: str) -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(10):
        QApplication.processEvents()
    viewer.screenshot(str(OUT / f"napari_{name}.png"), canvas_only=False, flash=False)
    print("wrote", OUT / f"napari_{name}.png")


def centers(labels: np.ndarray, n: int) -> list[tuple[int, int]]:
    """Interior points of the n largest objects of a label image."""
    from scipy import ndimage as ndi

    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    points = []
    for i in ids[np.argsort(-counts)][:n]:
        dist = ndi.distance_transform_edt(labels == i)
        points.append(np.unravel_index(int(np.argmax(dist)), labels.shape))
    return points


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--model", default=None, help="tiny (dry run), a model name or a checkpoint file (default: embedded)"
    )
    args = parser.parse_args()
    import napari

    from sam_plugins.napari import annotate

    OUT.mkdir(exist_ok=True)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 950)
    viewer.open_sample("sam-plugins", "cells-2d")
    truth = viewer.layers["cells ground truth"].data
    model = None
    if args.model == "tiny":
        from sam_plugins.models.configs import TINY, build_sam

        model = build_sam(TINY)
    elif args.model:
        model = args.model  # a model name or checkpoint file: the widget loads it
    widget = annotate(viewer.layers["cells"], viewer=viewer, model=model)
    viewer.reset_view()
    shot(viewer, "1_widget")

    cells = centers(truth, 8)
    widget.add_point(cells[0])
    wait(widget)
    shot(viewer, "2_click")

    y, x = cells[1]
    widget.commit()
    widget.boxes_layer.add_rectangles(np.array([[y - 25, x - 25], [y + 25, x + 25]]))
    wait(widget)
    shot(viewer, "3_box")

    widget.commit()
    for point in cells[2:]:
        widget.add_point(point)
        wait(widget)
        widget.commit()
    viewer.layers.selection.active = widget.target.value
    shot(viewer, "4_committed")

    widget.segment_everything()
    wait(widget)
    for name in ("committed objects", "current object"):
        viewer.layers[name].visible = False
    shot(viewer, "5_everything")

    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    viewer.open_sample("sam-plugins", "nuclei-3d")
    widget.image.value = viewer.layers["nuclei 3d"]
    stack_truth = viewer.layers["nuclei ground truth"].data
    ids, counts = np.unique(stack_truth[stack_truth > 0], return_counts=True)
    obj = stack_truth == ids[np.argmax(counts)]
    zs = np.nonzero(obj.any(axis=(1, 2)))[0]
    z = int(zs[len(zs) // 2])
    viewer.dims.set_point(0, z)
    (y, x) = centers(obj[z].astype(np.int32), 1)[0]
    widget.add_point((z, y, x))
    wait(widget)
    widget.propagate()
    wait(widget)
    viewer.dims.set_point(0, int(zs[len(zs) // 4]))
    viewer.reset_view()
    shot(viewer, "6_propagated")
    viewer.close()


if __name__ == "__main__":
    main()
