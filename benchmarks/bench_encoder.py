"""Image-encoder speed and memory: sam-plugins vs the official segment-anything, same run, same input.

    python benchmarks/bench_encoder.py            # vit_b, 3 timed runs each
    python benchmarks/bench_encoder.py --quick    # 1 timed run each

Prints time per forward, the ratio ours/official (target <= 0.6 in fp32), the max abs
difference of the embeddings (target <= 1e-4), peak memory of each encoder forward (measured in
a fresh subprocess each), and the opt-in bf16 mode with its error.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def build_pair(model_type: str):
    from conftest import make_pair
    from sam_plugins.models.configs import OFFICIAL_CONFIGS

    official, ours = make_pair(OFFICIAL_CONFIGS[model_type], seed=0)
    return official.image_encoder, ours.image_encoder


def timed(fn, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.inference_mode():
        out = fn(x)
    return time.perf_counter() - start, out


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB.

    VmHWM belongs to the process's own address space; ru_maxrss would be inherited from the
    parent that started this subprocess (Linux keeps it across fork and exec).
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_child(model_type: str, which: str) -> None:
    """Build one encoder only, run one forward, print peak RSS and the forward's share (in MB)."""
    from conftest import build_official, randomize_
    from sam_plugins.models.configs import OFFICIAL_CONFIGS, build_sam

    config = OFFICIAL_CONFIGS[model_type]
    model = build_official(config) if which == "official" else build_sam(config)
    encoder = randomize_(model).image_encoder
    x = torch.randn(1, 3, encoder.img_size, encoder.img_size)
    before = peak_rss_mb()
    # a high-water mark: its growth during the forward is the forward's own memory
    with torch.inference_mode():
        encoder(x)
    after = peak_rss_mb()
    print(json.dumps({"peak_mb": after, "forward_extra_mb": after - before}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one timed run each, no memory runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--_memory-child", dest="memory_child", choices=["official", "ours"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        peak_memory_child(args.model, args.memory_child)
        return
    repeats = 1 if args.quick else args.repeats

    official, ours = build_pair(args.model)
    x = torch.randn(1, 3, ours.img_size, ours.img_size, generator=torch.Generator().manual_seed(1))
    timed(official, x)  # warm-up both (first-call allocations, oneDNN kernel selection)
    timed(ours, x)
    t_official, t_ours = [], []
    for _ in range(repeats):  # interleaved so background load hits both alike
        t, ref = timed(official, x)
        t_official.append(t)
        t, out = timed(ours, x)
        t_ours.append(t)
    err = (out - ref).abs().max().item()
    ours.set_precision("bf16")
    timed(ours, x)
    t_bf16, out_bf16 = min(timed(ours, x) for _ in range(repeats))
    ours.set_precision("fp32")
    err_bf16 = (out_bf16 - ref).abs()

    best_off, best_ours = min(t_official), min(t_ours)
    print(f"model: {args.model}, input 1x3x{ours.img_size}x{ours.img_size}, threads {args.threads}")
    print(f"official encoder : {best_off:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in t_official)})")
    print(f"ours fp32        : {best_ours:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in t_ours)})")
    print(f"ratio ours/official fp32 : {best_ours / best_off:.3f}  (target <= 0.6)")
    print(f"max |ours - official| fp32 : {err:.2e}  (target <= 1e-4; embedding max {ref.abs().max():.2f})")
    print(
        f"ours bf16 (opt-in): {t_bf16:7.2f} s, ratio {t_bf16 / best_off:.3f}; "
        f"error vs official: max {err_bf16.max():.2e}, mean {err_bf16.mean():.2e}"
    )
    if not args.quick:
        for which in ("official", "ours"):
            result = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--model",
                    args.model,
                    "--threads",
                    str(args.threads),
                    "--_memory-child",
                    which,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            mem = json.loads(result.stdout.strip().splitlines()[-1])
            print(
                f"peak RSS {which:8s}: {mem['peak_mb']:7.0f} MB "
                f"(of which the forward pass: {mem['forward_extra_mb']:.0f} MB)"
            )


if __name__ == "__main__":
    main()
