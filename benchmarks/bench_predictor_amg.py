"""Predictor per-click latency and automatic mask generation: ours vs the official package.

One command, both measured in the same process on the same image with the same random vit_b weights:

    python benchmarks/bench_predictor_amg.py            # full: 32x32 grid (~3-6 min on 2 cores)
    python benchmarks/bench_predictor_amg.py --quick    # 8x8 grid, fewer repeats

Prints the per-click latency (prompt encoder + decoder + mask postprocessing for one point, via
``predict``), the mask decoder alone on an AMG batch (64 prompts; a quick, load-robust check) and the
end-to-end AMG time with default settings, each with the ratio official/ours (min and median of
interleaved runs, so load changes on a shared machine hit both), and checks that both generators
return the same masks.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from skimage import data  # noqa: E402

from conftest import build_official, randomize_  # noqa: E402
from reference import import_segment_anything  # noqa: E402
from sam_plugins.automatic import SamAutomaticMaskGenerator  # noqa: E402
from sam_plugins.models.configs import OFFICIAL_CONFIGS, build_sam  # noqa: E402
from sam_plugins.predictor import SamPredictor  # noqa: E402


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def report(name: str, off: list[float], ours: list[float], unit: float = 1e3, suffix: str = "ms") -> float:
    """Print min and median of both and the median ratio official/ours; return that ratio."""
    m_off, m_ours = statistics.median(off), statistics.median(ours)
    print(
        f"{name}: official min {min(off) * unit:.1f} / median {m_off * unit:.1f} {suffix}, "
        f"ours min {min(ours) * unit:.1f} / median {m_ours * unit:.1f} {suffix} "
        f"-> speed-up {m_off / m_ours:.2f}x (min/min {min(off) / min(ours):.2f}x)"
    )
    return m_off / m_ours


def bench_decoder(official, ours, repeats: int) -> float:
    """Mask decoder alone on 64 one-point prompts (vit_b-sized decoder, random embedding).

    Official: one call on the batch (as its AMG does). Ours: the AMG's screening call
    (``predict_ious``, chunked), which is what runs for every prompt.
    """
    g = torch.Generator().manual_seed(0)
    pe_mod = ours.prompt_encoder
    h, w = pe_mod.image_embedding_size
    emb = torch.randn(1, pe_mod.embed_dim, h, w, generator=g)
    points = (
        torch.rand(64, 1, 2, generator=g) * pe_mod.input_image_size[0],
        torch.ones(64, 1, dtype=torch.int),
    )
    sparse, dense = pe_mod(points, None, None)
    pe = pe_mod.get_dense_pe()
    dec = ours.mask_decoder
    chunk = dec.chunk_size(emb, 64)

    def run_ours() -> None:
        for start in range(0, 64, chunk):
            dec.predict_ious(emb, pe, sparse[start : start + chunk], dense[start : start + chunk])

    times: dict[str, list[float]] = {"official": [], "ours": []}
    for _ in range(repeats):
        for name, fn in (
            ("official", lambda: official.mask_decoder(emb, pe, sparse, dense, True)),
            ("ours", run_ours),
        ):
            times[name] += timed(fn, 1)
    return report("decoder, 64 prompts (IoU screen)", times["official"], times["ours"], 1.0, "s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="8x8 point grid and fewer click repeats")
    parser.add_argument("--model", default="vit_b", choices=sorted(OFFICIAL_CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=None, help="click repeats (default 30, quick 10)")
    parser.add_argument("--clicks-only", action="store_true", help="measure the per-click latency only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sa = import_segment_anything()
    config = OFFICIAL_CONFIGS[args.model]
    official = randomize_(build_official(config), seed=0)
    ours = build_sam(config)
    ours.load_state_dict(official.state_dict(), strict=True)
    image = data.astronaut()  # 512 x 512 RGB
    points_per_side = 8 if args.quick else 32
    clicks = args.clicks or (10 if args.quick else 30)
    print(
        f"model {args.model}, image {image.shape}, threads {args.threads}, "
        f"grid {points_per_side}x{points_per_side}, load average {os.getloadavg()[0]:.1f}"
    )

    with torch.inference_mode():
        po, pn = sa.SamPredictor(official), SamPredictor(ours)
        t_enc_off = timed(lambda: po.set_image(image), 1)[0]
        t_enc_ours = timed(lambda: pn.set_image(image), 1)[0]
        print(f"set_image (encoder): official {t_enc_off:.2f} s, ours {t_enc_ours:.2f} s")
        rng = np.random.default_rng(0)
        points = rng.uniform(0, 511, (clicks, 2))
        lat: dict[str, list[float]] = {"official": [], "ours": []}
        for pred in (po, pn):
            pred.predict(point_coords=points[:1], point_labels=np.array([1]))  # warm-up
        # Alternate the two predictors click by click, so load changes on a shared machine hit both.
        for point in points:
            for name, pred in (("official", po), ("ours", pn)):
                t0 = time.perf_counter()
                pred.predict(point_coords=point[None], point_labels=np.array([1]))
                lat[name].append(time.perf_counter() - t0)
        click_ratio = report(f"per-click latency ({clicks} clicks)", lat["official"], lat["ours"])
        a = po.predict(point_coords=points[:1], point_labels=np.array([1]), return_logits=True)
        b = pn.predict(point_coords=points[:1], point_labels=np.array([1]), return_logits=True)
        print(
            f"  click outputs max |diff|: logits {np.abs(a[0] - b[0]).max():.2e}, "
            f"iou {np.abs(a[1] - b[1]).max():.2e}"
        )
        if args.clicks_only:
            print(f"RATIOS per_click={click_ratio:.2f}x")
            return

        dec_ratio = bench_decoder(official, ours, 2 if args.quick else 3)

        amg_off = sa.SamAutomaticMaskGenerator(
            official, points_per_side=points_per_side, output_mode="uncompressed_rle"
        )
        amg_ours = SamAutomaticMaskGenerator(
            ours, points_per_side=points_per_side, output_mode="uncompressed_rle"
        )
        # ours, official, ours (x2 with --quick): the official run sits between ours, under the same load
        amg: dict[str, list[float]] = {"official": [], "ours": []}
        records: dict[str, list] = {}
        for name in ["ours", "official", "ours"] * (2 if args.quick else 1):
            gen = amg_ours if name == "ours" else amg_off
            t0 = time.perf_counter()
            records[name] = gen.generate(image)
            amg[name].append(time.perf_counter() - t0)
    rec_off, rec_ours = records["official"], records["ours"]
    same = len(rec_off) == len(rec_ours) and all(
        x["segmentation"] == y["segmentation"] for x, y in zip(rec_off, rec_ours, strict=True)
    )
    amg_ratio = report("AMG end to end (defaults)", amg["official"], amg["ours"], 1.0, "s")
    print(f"  masks: official {len(rec_off)}, ours {len(rec_ours)}, identical: {same}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"RATIOS per_click={click_ratio:.2f}x decoder={dec_ratio:.2f}x amg={amg_ratio:.2f}x")


if __name__ == "__main__":
    main()
