"""Re-create docs/images/fiftyone_*.png: label cell images with SAM, serve the App, screenshot it.

    python docs/scripts/fiftyone_screenshot.py [--model PATH_OR_NAME]

Needs `chromium` on PATH (apt-get install chromium). Everything stays on 127.0.0.1; the database
lives in a temp dir.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("FIFTYONE_DATABASE_DIR", tempfile.mkdtemp(prefix="sam-doc-db-"))
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
os.environ.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")

DOCS = Path(__file__).resolve().parents[1]
PORT = 5151


# The demo images: 384 px, which the encoder zooms 2x (to 768 px), close to the 1.5x it was trained
# with (docs/models.md, "Small images"); at least 300 photons at a nucleus peak, leaving out the
# generator's noisiest draws (on one with 17, automatic mode found 2 of 28 nuclei); and a low
# density, so that the screenshot stays readable (15-30 nuclei, each with its label).
SIZE, RADIUS, DENSITY, PHOTONS, N_IMAGES = 384, (8.0, 10.0), (0.03, 0.06), (300.0, 3000.0), 4


def make_dataset(fo, folder: Path, model: str | None):
    """Generated nuclei images with ground-truth boxes, labelled in two modes."""
    import numpy as np
    from PIL import Image

    from sam_plugins.fiftyone import segment
    from sam_plugins.images import prepare_image
    from sam_plugins.training.synthetic import SyntheticConfig, generate_sample

    config = SyntheticConfig(
        size=(SIZE, SIZE),
        kind_weights={"nuclei": 1.0},
        radius_range=RADIUS,
        density_range=DENSITY,
        photons_range=PHOTONS,
    )
    rng = np.random.default_rng(7)
    samples = []
    for i in range(N_IMAGES):
        s = generate_sample(rng, config)
        path = folder / f"nuclei_{i}.png"
        Image.fromarray(prepare_image(s.image)).save(path)
        h, w = s.labels.shape
        dets = []
        for idx in np.unique(s.labels)[1:]:
            ys, xs = np.nonzero(s.labels == idx)
            x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            box = [x0 / w, y0 / h, (x1 - x0) / w, (y1 - y0) / h]
            dets.append(fo.Detection(label="nucleus", bounding_box=box))
        samples.append(fo.Sample(filepath=str(path), ground_truth=fo.Detections(detections=dets)))
    dataset = fo.Dataset("sam-plugins-demo", overwrite=True)
    dataset.add_samples(samples)
    dataset.compute_metadata()
    segment(dataset, mode="boxes", prompt_field="ground_truth", label_field="sam_boxes", model=model)
    segment(dataset, mode="automatic", label_field="sam_automatic", model=model, points_per_side=16)
    # the screenshot shows the box-prompted masks alone, one colour per object
    dataset.app_config.active_fields = fo.ActiveFields(paths=["sam_boxes"])
    dataset.app_config.color_scheme = fo.ColorScheme(color_by="instance", opacity=0.55)
    dataset.save()
    return dataset


def screenshot(url: str, out: Path, size: str = "1400,900") -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium not found: apt-get install chromium")
    subprocess.run(
        [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size={size}", "--virtual-time-budget=25000", f"--screenshot={out}", url,
        ],
        check=True, capture_output=True, timeout=180,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="model name or checkpoint (default: embedded)")
    args = parser.parse_args()
    import fiftyone as fo

    work = Path(tempfile.mkdtemp(prefix="sam-doc-"))
    dataset = make_dataset(fo, work, args.model)
    session = fo.launch_app(dataset, address="127.0.0.1", port=PORT, remote=True, auto=False)
    base = f"http://127.0.0.1:{PORT}"
    for _ in range(60):
        try:
            urllib.request.urlopen(base, timeout=2)
            break
        except OSError:
            time.sleep(1)
    (DOCS / "images").mkdir(exist_ok=True)
    grid = f"{base}/datasets/{dataset.name}"
    sample_url = f"{grid}?id={dataset.first().id}"
    screenshot(grid, work / "warm-up.png")  # the first page load compiles/caches the App
    out = DOCS / "images" / "fiftyone_sample.png"
    for _ in range(4):  # retry while the App still shows its loading screen
        screenshot(sample_url, out)
        import numpy as np
        from PIL import Image

        if np.asarray(Image.open(out).convert("L")).std() > 20:
            break
    session.close() if hasattr(session, "close") else None
    print("wrote", DOCS / "images")


if __name__ == "__main__":
    main()
