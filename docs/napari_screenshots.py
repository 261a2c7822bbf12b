"""Make the screenshots of docs/napari.md with the real widget (run under Xvfb or a desktop).

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/napari_screenshots.py [--model tiny]

Every step is what a user does: open the sample, click cells, commit, segment everything,
fine-tune on the committed cells, propagate through the 3-D sample. `--model tiny` uses the
random-weight test model (checks the script, masks are meaningless); a name or checkpoint file
uses that model; the default is the embedded model. Prompts go on the cells that stand most
apart from their neighbours in the sample's ground truth (what a user would click first); the
script prints how well each mask matches the ground truth, so a poor screenshot shows up in its
output.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "images"
MAX_WIDTH = 1200  # screenshots are downscaled to this width (file size)
WINDOW_2D = (slice(40, 340), slice(0, 360))  # the part of the 2-D sample the clicks go to
DOCK_WIDTH = 380


def wait(widget, timeout: float = 600) -> None:
    from qtpy.QtWidgets import QApplication

    start = time.time()
    while widget.job is not None and time.time() - start < timeout:
        QApplication.processEvents()
        time.sleep(0.02)
    for _ in range(20):
        QApplication.processEvents()


def shot(viewer, name: str) -> None:
    from PIL import Image
    from qtpy.QtWidgets import QApplication

    for _ in range(10):
        QApplication.processEvents()
    path = OUT / f"napari_{name}.png"
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    image = Image.open(path).convert("RGB")
    if image.width > MAX_WIDTH:
        image = image.resize((MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)), Image.LANCZOS)
    # 256 colours without dithering: a fifth of the size, no visible change
    image.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(path, optimize=True)
    print("wrote", path, f"({path.stat().st_size // 1024} KB)")


def widen_dock(viewer, widget, width: int = DOCK_WIDTH) -> None:
    """Give the docked widget room, so that no control or status text is cut off (its scroll
    area has no horizontal scroll bar: a dock narrower than its content clips the right edge)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QDockWidget, QScrollArea

    native = widget.native if hasattr(widget, "native") else widget
    for scroll in native.findChildren(QScrollArea):
        if scroll.widget() is not None:
            needed = scroll.widget().sizeHint().width() + scroll.verticalScrollBar().sizeHint().width()
            width = max(width, needed + 24)
    dock = native
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parent()
    if dock is not None:
        viewer.window._qt_window.resizeDocks([dock], [width], Qt.Horizontal)
    print("dock width", width)


def isolated_cells(labels: np.ndarray, n: int, window: tuple[slice, slice]) -> list[int]:
    """Ids of the n objects inside `window` that are farthest from any other object."""
    from scipy import ndimage as ndi

    gaps = {}
    for i, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None or any(
            b.start <= w.start or b.stop >= w.stop for b, w in zip(box, window, strict=True)
        ):
            continue  # missing, or not wholly inside the window
        pad = tuple(slice(max(0, b.start - 30), b.stop + 30) for b in box)
        sub = labels[pad]
        others = (sub > 0) & (sub != i)
        gaps[i] = ndi.distance_transform_edt(~others)[sub == i].min() if others.any() else np.inf
    return sorted(gaps, key=lambda i: -gaps[i])[:n]


def interior(mask: np.ndarray) -> tuple[int, ...]:
    """The point of a mask farthest from its outline."""
    from scipy import ndimage as ndi

    dist = ndi.distance_transform_edt(mask)
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(dist)), mask.shape))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def vivid_colors(layer, ids, tries: int = 200) -> None:
    """Use the colour seed under which the dullest of `ids` is most saturated and bright: a
    greyish or dark colour would look like an unsegmented cell in the screenshot."""
    import colorsys

    def dullest(seed: int) -> float:
        layer.new_colormap(seed=seed)
        hsv = [colorsys.rgb_to_hsv(*layer.get_color(int(i))[:3]) for i in ids]
        return min(min(sat, value - 0.1) for _, sat, value in hsv)

    layer.new_colormap(seed=max(range(tries), key=dullest))


def around(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The (Y, X) window around a 2-D mask, `margin` pixels wider on each side, inside the image."""
    ys, xs = np.nonzero(mask)
    return tuple(
        slice(max(0, int(c.min()) - margin), min(n, int(c.max()) + 1 + margin))
        for c, n in zip((ys, xs), mask.shape, strict=True)
    )


def show_window(viewer, window: tuple[slice, slice], shape: tuple[int, int]) -> None:
    """Zoom so that `window` (Y, X slices) fills the canvas, showing no space beyond the image
    (of `shape`) where the image is large enough."""
    camera = getattr(getattr(viewer, "scene", None), "camera", None) or viewer.camera
    height, width = viewer.window._qt_viewer.canvas.size
    zoom = 0.95 * min(height / (window[0].stop - window[0].start), width / (window[1].stop - window[1].start))
    center = []
    for w, n, px in zip(window, shape, (height, width), strict=True):
        half = px / zoom / 2
        c = (w.start + w.stop) / 2
        center.append(min(max(c, half), n - half) if 2 * half <= n else n / 2)
    camera.center = tuple(center)
    camera.zoom = zoom


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--model", default=None, help="tiny (dry run), a model name or a checkpoint file (default: embedded)"
    )
    args = parser.parse_args()
    import napari

    from sam_plugins.automatic.tuning import match_f1
    from sam_plugins.models.checkpoints import save_checkpoint
    from sam_plugins.napari import annotate
    from sam_plugins.napari._controls import CHECKPOINT_CHOICE

    OUT.mkdir(exist_ok=True)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1560, 960)
    viewer.open_sample("sam-plugins", "cells-2d")
    truth = viewer.layers["cells ground truth"].data
    model = None
    if args.model == "tiny":
        from sam_plugins.models.configs import TINY, build_sam

        model = build_sam(TINY)
    elif args.model:
        model = args.model  # a model name or checkpoint file: the widget loads it
    widget = annotate(viewer.layers["cells"], viewer=viewer, model=model)
    widen_dock(viewer, widget)
    # load the model and encode the image first, as Compute embeddings does: the threshold
    # spinboxes then show the values the loaded model recommends
    widget.compute_embeddings()
    wait(widget)
    viewer.reset_view()
    shot(viewer, "1_widget")

    cells = isolated_cells(truth, 8, WINDOW_2D)
    show_window(viewer, around(np.isin(truth, cells[:2]), 60), truth.shape)  # close-up of the first two cells
    widget.add_point(interior(truth == cells[0]))
    wait(widget)
    print(f"click on cell {cells[0]}: IoU {iou(widget.current_layer.data > 0, truth == cells[0]):.2f}")
    shot(viewer, "2_click")

    widget.commit()
    ys, xs = np.nonzero(truth == cells[1])
    margin = 4  # a box drawn by hand around the cell
    widget.boxes_layer.add_rectangles(
        np.array([[ys.min() - margin, xs.min() - margin], [ys.max() + margin, xs.max() + margin]])
    )
    wait(widget)
    print(f"box around cell {cells[1]}: IoU {iou(widget.current_layer.data > 0, truth == cells[1]):.2f}")
    shot(viewer, "3_box")

    widget.commit()
    for cell in cells[2:]:
        widget.add_point(interior(truth == cell))
        wait(widget)
        print(f"click on cell {cell}: IoU {iou(widget.current_layer.data > 0, truth == cell):.2f}")
        widget.commit()
    committed = viewer.layers[widget.target.value.name].data
    print(f"committed {len(np.unique(committed)) - 1} objects")
    viewer.layers.selection.active = widget.target.value
    vivid_colors(widget.target.value, range(1, 9))
    show_window(viewer, WINDOW_2D, truth.shape)
    shot(viewer, "4_committed")

    if hasattr(widget, "prompts"):
        # one point per bright object: what docs/napari.md describes for the embedded model (made
        # for cells and nuclei); a no-op once its checkpoint recommends it
        widget.prompts.value = "seeds"
    widget.segment_everything()
    wait(widget)
    for name in ("committed objects", "current object"):
        viewer.layers[name].visible = False
    auto = np.asarray(viewer.layers["auto segmentation"].data)
    score = match_f1(auto, truth)
    print(
        f"segment everything: {len(np.unique(auto)) - 1} objects for {len(np.unique(truth)) - 1} cells, "
        f"F1@0.5 {score['f1']:.2f} (tp {score['tp']:.0f}, fp {score['fp']:.0f}, fn {score['fn']:.0f}); "
        f"prompts {getattr(getattr(widget, 'prompts', None), 'value', 'grid')}, "
        f"min quality {widget.quality.value:.2f}, min stability {widget.stability.value:.2f}"
    )
    viewer.reset_view()
    shot(viewer, "5_everything")

    # fine-tune on the cells committed above (the workflow docs/napari.md describes): a short run
    tuner = widget.open_finetune()  # the annotator's button: its image, commit target and model
    assert tuner.labels.value is viewer.layers["committed objects"]
    if model is not None and not isinstance(model, str):  # the dry run's tiny model
        tuner.model.value = CHECKPOINT_CHOICE
        tuner.checkpoint.value = save_checkpoint(Path(tempfile.mkdtemp()) / "tiny.pt", model, {})
    elif isinstance(model, str):
        tuner.model.value = model if model in tuner.model.choices else CHECKPOINT_CHOICE
        tuner.checkpoint.value = model
    tuner.steps.value = 10
    tuner.out.value = Path(tempfile.mkdtemp()) / "cells-finetuned.pt"
    tuner.start()
    wait(tuner)
    print(f"fine-tune: {tuner.status.value}")
    shot(viewer, "7_finetune")
    viewer.window.remove_dock_widget(tuner)

    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    viewer.open_sample("sam-plugins", "nuclei-3d")
    widget.image.value = viewer.layers["nuclei 3d"]
    stack_truth = viewer.layers["nuclei ground truth"].data
    # the nucleus with the most room around it among the ten longest in Z
    ids, counts = np.unique(stack_truth[stack_truth > 0], return_counts=True)
    longest = {int(i) for i in ids[np.argsort(-counts)][:10]}
    nucleus = next(i for i in isolated_cells(stack_truth, len(ids), (slice(-1, 10**6),) * 3) if i in longest)
    obj = stack_truth == nucleus
    zs = np.nonzero(obj.any(axis=(1, 2)))[0]
    z = int(zs[len(zs) // 2])
    viewer.dims.set_point(0, z)
    y, x = interior(obj[z])
    widget.add_point((z, y, x))
    wait(widget)
    widget.propagate()
    wait(widget)
    mask = np.asarray(widget.current_layer.data) > 0
    done = np.nonzero(mask.any(axis=(1, 2)))[0]
    print(
        f"nucleus {nucleus}: clicked on slice {z}, ground truth slices {zs[0]}-{zs[-1]}, "
        f"propagated over {done.min()}-{done.max()}"
    )
    print("  IoU per slice:", " ".join(f"{k}:{iou(mask[k], obj[k]):.2f}" for k in done))
    shown = min(z + 3, int(zs[-1]))
    viewer.dims.set_point(0, shown)
    print(f"  shown: slice {shown}, IoU {iou(mask[shown], obj[shown]):.2f}")
    show_window(viewer, around(obj[z], 60), obj.shape[1:])
    viewer.layers.selection.active = viewer.layers["current object"]
    shot(viewer, "6_propagated")
    viewer.close()


if __name__ == "__main__":
    main()
