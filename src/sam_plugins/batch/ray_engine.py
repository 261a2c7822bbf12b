"""The Ray engine: a pool of actors, each holding the model once, fed shards with back-pressure.

- Each actor loads the model in its constructor (one GPU per actor when the cluster has GPUs).
- Tasks are grouped into shards; at most `max_in_flight` shards per actor are outstanding, and
  the task iterator is consumed lazily, so a job over millions of images streams.
- Ray restarts a dead actor (`max_restarts`) and retries its outstanding calls
  (`max_task_retries`); if a call still fails with a system error, the driver re-queues the
  whole shard on a fresh actor, up to `max_shard_retries` times. A killed worker therefore loses
  nothing, and because results are only written by the single writer after they return, results
  already written stay; duplicates from retries are dropped by the pipeline.
- Image-level errors are not retried: they come back as failed results.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from .records import Task, TaskResult
from .worker import Segmenter, SegmentSettings

logger = logging.getLogger(__name__)


class SegmentActor:
    """Actor body: one `Segmenter` (one loaded model) per actor process."""

    def __init__(self, settings: SegmentSettings) -> None:
        self.segmenter = Segmenter(settings)

    def pid(self) -> int:
        return os.getpid()

    def info(self) -> dict[str, Any]:
        return self.segmenter.info()

    def run_shard(self, tasks: list[Task]) -> list[TaskResult]:
        return [self.segmenter.run(task) for task in tasks]


class RayEngine:
    """Run a batch job on Ray (a local Ray, or a cluster at `address`).

    `num_workers` actors (default: one per GPU, else one per CPU of the cluster), shards of
    `shard_size` tasks, `max_in_flight` outstanding shards per actor. `init_options` go to
    `ray.init` when this engine has to start or join Ray itself.
    """

    def __init__(
        self,
        address: str | None = None,
        num_workers: int | None = None,
        shard_size: int = 4,
        max_in_flight: int = 2,
        num_gpus_per_worker: float | None = None,
        num_cpus_per_worker: float = 1,
        max_restarts: int = 2,
        max_task_retries: int = 2,
        max_shard_retries: int = 3,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        if shard_size < 1 or max_in_flight < 1:
            raise ValueError("shard_size and max_in_flight must be >= 1")
        self.address = address
        self.num_workers = num_workers
        self.shard_size = shard_size
        self.max_in_flight = max_in_flight
        self.num_gpus_per_worker = num_gpus_per_worker
        self.num_cpus_per_worker = num_cpus_per_worker
        self.max_restarts = max_restarts
        self.max_task_retries = max_task_retries
        self.max_shard_retries = max_shard_retries
        self.init_options = dict(init_options or {})
        self.actors: list[Any] = []
        self.shard_retries = 0
        self._info: dict[str, Any] = {}

    # -- setup --------------------------------------------------------------------------------
    def _ensure_ray(self):
        try:
            import ray
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("the Ray engine needs Ray: pip install 'sam-plugins[ray]'") from err
        if not ray.is_initialized():
            options = {"include_dashboard": False, "log_to_driver": False, **self.init_options}
            ray.init(address=self.address, **options)
        return ray

    def _actor_class(self, ray):
        resources = ray.cluster_resources()
        gpus = self.num_gpus_per_worker
        if gpus is None:
            gpus = 1 if resources.get("GPU", 0) >= 1 else 0
        if self.num_workers is not None:
            count = self.num_workers
        elif gpus:
            count = max(1, int(resources.get("GPU", 0) // gpus))
        else:
            count = max(1, int(resources.get("CPU", 1) // max(self.num_cpus_per_worker, 1e-3)))
        actor = ray.remote(SegmentActor).options(
            num_cpus=self.num_cpus_per_worker,
            num_gpus=gpus,
            max_restarts=self.max_restarts,
            max_task_retries=self.max_task_retries,
        )
        return actor, count

    def model_info(self) -> dict[str, Any]:
        return dict(self._info)

    # -- run ----------------------------------------------------------------------------------
    def map(self, tasks: Iterable[Task], settings: SegmentSettings) -> Iterator[TaskResult]:
        ray = self._ensure_ray()
        from ray.exceptions import RayError, RayTaskError

        actor_cls, count = self._actor_class(ray)
        if settings.num_threads is None:
            threads = max(1, int(self.num_cpus_per_worker))
            settings = SegmentSettings(**{**settings.to_dict(), "num_threads": threads})
        self.actors = [actor_cls.remote(settings) for _ in range(count)]
        self._info = ray.get(self.actors[0].info.remote())
        task_iter = iter(tasks)
        retry: deque[tuple[int, list[Task]]] = deque()
        pending: dict[Any, tuple[int, int, list[Task]]] = {}  # ref -> (actor index, attempt, shard)
        load = [0] * count

        def next_shard() -> tuple[int, list[Task]] | None:
            if retry:
                return retry.popleft()
            shard = list(islice(task_iter, self.shard_size))
            return (0, shard) if shard else None

        def fill() -> None:
            for index in sorted(range(count), key=lambda i: load[i]):
                while load[index] < self.max_in_flight:
                    item = next_shard()
                    if item is None:
                        return
                    attempt, shard = item
                    ref = self.actors[index].run_shard.remote(shard)
                    pending[ref] = (index, attempt, shard)
                    load[index] += 1

        try:
            fill()
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                ref = ready[0]
                index, attempt, shard = pending.pop(ref)
                load[index] -= 1
                try:
                    results = ray.get(ref)
                except RayTaskError:
                    raise  # a bug in the worker code itself, not a lost worker
                except RayError as err:
                    self.shard_retries += 1
                    logger.warning("shard of %d tasks lost (%s); re-queuing", len(shard), type(err).__name__)
                    if attempt + 1 > self.max_shard_retries:
                        message = f"worker lost {attempt + 1} times: {type(err).__name__}"
                        yield from (TaskResult(key=t.key, path=t.path, error=message) for t in shard)
                    else:
                        retry.append((attempt + 1, shard))
                        self._replace_actor(ray, actor_cls, settings, index)
                else:
                    yield from results
                fill()
        finally:
            for actor in self.actors:
                ray.kill(actor, no_restart=True)
            self.actors = []

    def _replace_actor(self, ray, actor_cls, settings, index) -> None:
        """Give slot `index` a fresh actor if its actor is gone for good."""
        from ray.exceptions import RayError

        try:
            ray.get(self.actors[index].pid.remote(), timeout=30)
            return  # the actor was restarted by Ray and is alive again
        except (RayError, TimeoutError):
            pass  # dead (or hung): replace it
        ray.kill(self.actors[index], no_restart=True)
        self.actors[index] = actor_cls.remote(settings)
