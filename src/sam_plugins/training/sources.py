"""Where training images come from, and the examples of each step (optionally from worker processes).

Sources: generated images (`synthetic`) or a folder of image/label pairs. `draw_examples` turns
them into prepared, augmented crops with chosen objects; `step_examples` yields those of every
step, in the main process or prefetched by `data_workers` processes (the same examples either way:
each step's are drawn with a random generator seeded by (seed, step)).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .data import AugmentConfig, TrainExample, as_pair, make_example

if TYPE_CHECKING:
    from .trainer import TrainConfig


class _GeneratedSource(Sequence):
    """Synthetic images from `generate_sample`, one independent stream per index."""

    def __init__(self, seed: int, stream: int, size: int, kwargs: dict, cache: bool) -> None:
        from .synthetic import SyntheticConfig, generate_sample

        self._gen = generate_sample
        self._cfg = SyntheticConfig(**kwargs) if kwargs else None
        self.seed, self.stream, self.size, self.cache = seed, stream, size, cache
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index in self._cache:
            return self._cache[index]
        rng = np.random.default_rng([self.seed, self.stream, index])
        pair = as_pair(self._gen(rng, self._cfg))
        if self.cache:
            self._cache[index] = pair
        return pair


def make_sources(config: TrainConfig, dataset: Sequence | None = None) -> tuple[Sequence, Sequence]:
    """(train, validation) sources of (image, labels) pairs for a config. For ``data`` "dataset"
    (or "folder", already read) ``dataset`` holds the pairs, split by ``val_fraction``."""
    if config.data == "synthetic":
        pool = config.train_pool if config.train_pool > 0 else 2**31 - 1
        train = _GeneratedSource(config.seed, 1, pool, config.synthetic, cache=config.train_pool > 0)
        val = _GeneratedSource(config.seed, 2, config.val_images, config.synthetic, cache=True)
        return train, val
    if config.data in ("folder", "dataset"):
        from .data import FolderDataset, PairsDataset, warn_small_dataset

        if dataset is not None:  # already read (a FolderDataset for "folder") or pairs in memory
            full = dataset if isinstance(dataset, PairsDataset) else PairsDataset(dataset)
        elif config.data == "dataset":
            raise ValueError("data = 'dataset' needs its pairs: train(config, dataset=[(image, labels)])")
        elif not config.images_dir or not config.labels_dir:
            raise ValueError("data = 'folder' needs images_dir and labels_dir")
        else:
            full = FolderDataset(config.images_dir, config.labels_dir)
        return split_dataset(full, config.val_fraction, config.seed, warn_small_dataset)
    raise ValueError(f"unknown data source {config.data!r} (synthetic, folder or dataset)")


def split_dataset(
    full: Sequence, val_fraction: float, seed: int, warn: Callable[[int], None] | None = None
) -> tuple[Sequence, Sequence]:
    """Split into train/val index subsets (at least one validation item when len > 1)."""
    order = np.random.default_rng(seed).permutation(len(full))
    n_val = min(max(1, round(val_fraction * len(full))), len(full) - 1) if len(full) > 1 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    if warn is not None:
        warn(len(train_idx))
    train = [full[int(i)] for i in train_idx]
    val = [full[int(i)] for i in val_idx] or train[:1]
    return train, val


def draw_examples(
    source: Sequence, rng: np.random.Generator, n: int, config: TrainConfig, image_size: int, augment: bool
) -> list[TrainExample]:
    """`n` prepared examples with at least one object each (a few retries per empty crop).

    With augmentation items are drawn at random; without (validation) they are taken in order.
    """
    aug = AugmentConfig(**config.augment) if augment else None
    out: list[TrainExample] = []
    for attempt in range(50 * n):
        if len(out) == n:
            break
        index = int(rng.integers(len(source))) if augment else attempt % len(source)
        image, labels = as_pair(source[index])
        ex = make_example(
            image,
            labels,
            rng,
            image_size=image_size,
            crop_size=config.crop_size,
            max_objects=config.objects_per_image,
            min_area=config.min_area,
            augment=aug,
            channel=config.channel,
            touching_weight=config.touching_weight if augment else 1.0,
        )
        if ex is not None:
            out.append(ex)
    if len(out) < n:
        raise ValueError("could not draw training crops with objects; check the labels and min_area")
    return out


def step_rng(config: TrainConfig, step: int) -> np.random.Generator:
    """The generator that draws the examples of `step` (the prompts use another stream)."""
    return np.random.default_rng([config.seed, 0, step])


class _StepExamples(torch.utils.data.Dataset):
    """Item i = the examples of step `start + i`. Without a `source` (in worker processes) the image
    source is built on first use, inside each worker."""

    def __init__(
        self, config: TrainConfig, image_size: int, start: int, stop: int, source: Sequence | None = None
    ) -> None:
        self.config, self.image_size, self.start, self.stop = config, image_size, start, stop
        self._source = source

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> list[TrainExample]:
        if self._source is None:
            self._source = make_sources(self.config)[0]
        step = self.start + i
        return draw_examples(
            self._source,
            step_rng(self.config, step),
            self.config.images_per_step,
            self.config,
            self.image_size,
            augment=True,
        )


def _as_is(item: list[TrainExample]) -> list[TrainExample]:
    return item


def step_examples(
    config: TrainConfig, source: Sequence, image_size: int, start: int, stop: int
) -> Iterator[list[TrainExample]]:
    """The examples of steps start..stop-1: drawn here, or with `config.data_workers` > 0 prepared
    ahead by that many processes (a GPU otherwise waits for the CPU-side generation and augmentation)."""
    if config.data_workers <= 0:
        here = _StepExamples(config, image_size, start, stop, source)
        yield from (here[i] for i in range(len(here)))
        return
    loader = torch.utils.data.DataLoader(
        _StepExamples(config, image_size, start, stop),
        batch_size=None,
        shuffle=False,
        num_workers=config.data_workers,
        collate_fn=_as_is,
        prefetch_factor=4,
    )
    yield from loader
