"""The two dataset shapes every method and the engine accept, and their seeded, shardable loaders.

*Shared-input* (:class:`SharedInputData`): one example, T targets, a mask per task; a batch is
``(inputs, {task: (targets, mask)})``. *Per-task* (:class:`PerTaskData`): each task its own
examples and split; a batch is ``{task: (inputs, targets, mask)}``.

Examples live in an :class:`ExampleSet`, which returns whole batches from an index array
(``get_batch``), so in-memory sources pay one fancy-index per batch and file-backed sources
(images, volumes) can decode and cache per item behind the same call.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ..tasks import Task

SPLITS = ("train", "val", "test", "train1", "train2")


class InputStore(Protocol):
    """Anything that returns a batch of inputs for an index array: a tensor, a lazy image/volume reader."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: np.ndarray) -> torch.Tensor: ...


@dataclass
class ExampleSet:
    """Inputs and per-task targets/masks of one pool of examples (indexed 0..n−1).

    ``targets[t]``: (n,) long class indices, (n,) float standardised values, or (n, C) multi-hot;
    ``masks[t]``: (n,) bool, True where the target is known. ``ids`` name the examples (row id,
    file name) for ``split.csv``.
    """

    inputs: InputStore
    targets: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    ids: np.ndarray
    transform: Any = None  # callable(inputs, generator) -> inputs, applied to training batches only

    def __len__(self) -> int:
        return len(self.ids)

    def get_inputs(self, index: np.ndarray, generator: torch.Generator | None = None) -> torch.Tensor:
        x = self.inputs[index]
        if generator is not None and self.transform is not None:
            x = self.transform(x, generator)
        return x

    def get_targets(self, index: np.ndarray, tasks: Sequence[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.as_tensor(index, dtype=torch.long)
        return {t: (self.targets[t][idx], self.masks[t][idx]) for t in tasks}


@dataclass(frozen=True)
class InputSpec:
    """What the model sees: ``kind`` in {vector, image, volume}, the per-example shape and the
    dtype of a batch's inputs (every source gives float32 tensors)."""

    kind: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def in_features(self) -> int:
        return int(np.prod(self.shape))

    @property
    def in_channels(self) -> int:
        return int(self.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        return cls(d["kind"], tuple(d["shape"]), d.get("dtype", "float32"))


def shard_order(n: int, *, shuffle: bool, seed: int, epoch: int | tuple[int, ...], rank: int = 0,
                world_size: int = 1) -> np.ndarray:
    """Positions 0..n−1 for one epoch: a seeded permutation (same on every rank), strided by rank.

    Training orders (``shuffle``) are padded by wrapping so that every rank takes the same number
    of steps (like ``DistributedSampler``); evaluation orders are not padded, so gathered
    predictions cover every example exactly once."""
    from ..seeding import np_rng

    order = np_rng(seed, "data_order", epoch).permutation(n) if shuffle else np.arange(n)
    if world_size > 1 and shuffle:
        total = -(-n // world_size) * world_size
        if total > n:
            order = np.concatenate([order, order[: total - n]])
    if world_size > 1:
        order = order[rank::world_size]
    return order


@dataclass
class SharedInputData:
    """Shared-input data: one :class:`ExampleSet`, split indices over it, and the tasks."""

    tasks: list[Task]
    examples: ExampleSet
    splits: dict[str, np.ndarray]
    input_spec: InputSpec
    meta: dict[str, Any] = field(default_factory=dict)

    shape = "shared"

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def split_size(self, split: str) -> int:
        return len(self.splits[split])

    def num_batches(self, split: str, batch_size: int, *, drop_last: bool = False, world_size: int = 1) -> int:
        n = -(-self.split_size(split) // world_size)
        return n // batch_size if drop_last else -(-n // batch_size)

    def batches(
        self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int | tuple[int, ...] = 0,
        start: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = False, augment: bool = False,
        workers: int = 0,
    ) -> Iterator[tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]]:
        """Yield batches of ``split`` from batch number ``start`` (resume inside an epoch);
        ``workers`` threads build the next batches ahead (same batches, same order)."""
        from ..seeding import generator

        pool = self.splits[split]
        order = pool[shard_order(len(pool), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank, world_size=world_size)]
        n_batches = len(order) // batch_size if drop_last else -(-len(order) // batch_size)

        def build(b: int):
            index = order[b * batch_size:(b + 1) * batch_size]
            gen = generator(seed, "augment", epoch, b, rank) if augment else None
            return self.examples.get_inputs(index, gen), self.examples.get_targets(index, self.task_names)

        yield from prefetch(build, range(start, n_batches), workers)

    def task_pool(self, split: str, task: str) -> np.ndarray:
        """The examples of ``split`` with a known target of ``task`` (a round-robin task's stream)."""
        pool = self.splits[split]
        return pool[self.examples.masks[task][torch.as_tensor(pool, dtype=torch.long)].numpy()]

    def task_batch(self, split: str, task: str, number: int, batch_size: int, *, seed: int = 0, rank: int = 0,
                   world_size: int = 1, augment: bool = False) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Batch ``number`` of ``task``'s own stream (:func:`task_stream_index`): ``(inputs, {task: (y, mask)})``."""
        from ..seeding import generator, stream_seed

        index, epoch, pos = task_stream_index(self.task_pool(split, task), self.task_names.index(task), number,
                                              batch_size, seed=seed, rank=rank, world_size=world_size)
        gen = generator(stream_seed(seed, "task_stream", self.task_names.index(task)), "augment", epoch, pos,
                        rank) if augment else None
        return self.examples.get_inputs(index, gen), self.examples.get_targets(index, [task])

    def split_table(self) -> list[dict[str, Any]]:
        """Rows of ``split.csv``: every example's split (train rows also name train1/train2)."""
        rows: dict[int, dict[str, Any]] = {}
        for name in ("train", "val", "test"):
            for i in self.splits.get(name, []):
                rows[int(i)] = {"index": int(i), "id": _id(self.examples.ids[i]), "split": name, "subsplit": ""}
        for name in ("train1", "train2"):
            for i in self.splits.get(name, []):
                rows[int(i)]["subsplit"] = name
        return [rows[k] for k in sorted(rows)]


@dataclass
class PerTaskData:
    """Per-task data: every task its own :class:`ExampleSet` and split; one input spec for all."""

    tasks: list[Task]
    examples: dict[str, ExampleSet]
    splits: dict[str, dict[str, np.ndarray]]
    input_spec: InputSpec
    meta: dict[str, Any] = field(default_factory=dict)

    shape = "per_task"

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def split_size(self, split: str) -> int:
        return sum(len(self.splits[t][split]) for t in self.task_names)

    def num_batches(self, split: str, batch_size: int, *, drop_last: bool = False, world_size: int = 1) -> int:
        """Batches per epoch: the longest task's count; shorter tasks restart (training) or stop (eval)."""
        counts = []
        for t in self.task_names:
            n = -(-len(self.splits[t][split]) // world_size)
            counts.append(n // batch_size if drop_last else -(-n // batch_size))
        return max(counts) if counts else 0

    def batches(
        self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int | tuple[int, ...] = 0,
        start: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = False, augment: bool = False,
        workers: int = 0,
    ) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """Yield ``{task: (inputs, targets, mask)}``. In training (``shuffle``) a task that runs
        out restarts with its next permutation, so every step sees every task; in evaluation a
        task drops out of the batch once its split is exhausted."""
        from ..seeding import generator, order_key, stream_seed

        n_batches = self.num_batches(split, batch_size, drop_last=drop_last, world_size=world_size)
        per_task: dict[str, tuple[np.ndarray, int]] = {}
        for ti, t in enumerate(self.task_names):
            pool = self.splits[t][split]
            task_seed = stream_seed(seed, "task_order", ti)
            per_task[t] = (pool, task_seed)
        def build(b: int) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            batch = {}
            for t, (pool, task_seed) in per_task.items():
                if len(pool) == 0:
                    continue
                n_local = -(-len(pool) // world_size)
                per_epoch = n_local // batch_size if drop_last else -(-n_local // batch_size)
                per_epoch = max(per_epoch, 1)
                if not shuffle and b >= per_epoch:
                    continue
                rep, pos = divmod(b, per_epoch)
                order = pool[shard_order(len(pool), shuffle=shuffle, seed=task_seed, epoch=order_key((epoch, rep), (1000,)),
                                         rank=rank, world_size=world_size)]
                index = order[pos * batch_size:(pos + 1) * batch_size]
                if len(index) == 0:
                    continue
                ex = self.examples[t]
                gen = generator(task_seed, "augment", epoch, b, rank) if augment else None
                y, m = ex.get_targets(index, [t])[t]
                batch[t] = (ex.get_inputs(index, gen), y, m)
            return batch

        for batch in prefetch(build, range(start, n_batches), workers):
            if batch:
                yield batch

    def task_pool(self, split: str, task: str) -> np.ndarray:
        return self.splits[task][split]

    def task_batch(self, split: str, task: str, number: int, batch_size: int, *, seed: int = 0, rank: int = 0,
                   world_size: int = 1, augment: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batch ``number`` of ``task``'s own stream (:func:`task_stream_index`): ``{task: (x, y, mask)}``."""
        from ..seeding import generator, stream_seed

        ti = self.task_names.index(task)
        index, epoch, pos = task_stream_index(self.task_pool(split, task), ti, number, batch_size, seed=seed,
                                              rank=rank, world_size=world_size)
        ex = self.examples[task]
        gen = generator(stream_seed(seed, "task_stream", ti), "augment", epoch, pos, rank) if augment else None
        y, m = ex.get_targets(index, [task])[task]
        return {task: (ex.get_inputs(index, gen), y, m)}

    def split_table(self) -> list[dict[str, Any]]:
        rows = []
        for t in self.task_names:
            ids = self.examples[t].ids
            sub = {}
            for name in ("train1", "train2"):
                for i in self.splits[t].get(name, []):
                    sub[int(i)] = name
            for name in ("train", "val", "test"):
                for i in sorted(int(j) for j in self.splits[t].get(name, [])):
                    rows.append({"task": t, "index": i, "id": _id(ids[i]), "split": name, "subsplit": sub.get(i, "")})
        return rows


def task_stream_index(pool: np.ndarray, task_index: int, number: int, batch_size: int, *, seed: int, rank: int = 0,
                      world_size: int = 1) -> tuple[np.ndarray, int, int]:
    """The examples of batch ``number`` of one task's own training stream, with its (epoch, position).

    The stream is the task's pool reshuffled every epoch (a permutation seeded by the run seed,
    the task's index and the epoch, shared by every rank and strided by rank), batched without
    dropping the remainder (an epoch's last batch can be smaller), repeated (parameter
    allocation §5). A function of its arguments only, so a resumed run draws the same batches."""
    from ..seeding import stream_seed

    if len(pool) == 0:
        raise ValueError(f"task {task_index} has no training examples")
    per_epoch = max(1, -(-(-(-len(pool) // world_size)) // batch_size))
    epoch, pos = divmod(int(number), per_epoch)
    order = pool[shard_order(len(pool), shuffle=True, seed=stream_seed(seed, "task_stream", task_index), epoch=epoch,
                             rank=rank, world_size=world_size)]
    return order[pos * batch_size:(pos + 1) * batch_size], epoch, pos


MultiTaskData = SharedInputData | PerTaskData


def prefetch(build, numbers, workers: int) -> Iterator[Any]:
    """``build(b)`` for every batch number, in order; with ``workers`` > 0 a thread pool builds up
    to ``2 · workers`` batches ahead (decoding and augmentation overlap the training step). Every
    batch depends only on its number, so the result is the same with or without workers."""
    if workers <= 0:
        for b in numbers:
            yield build(b)
        return
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sharewise-data") as pool:
        pending: deque = deque()
        for b in numbers:
            pending.append(pool.submit(build, b))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _id(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def iter_task_batches(batch: Any, task_names: Sequence[str]) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Uniform view of either batch shape: ``(task, inputs, targets, mask)`` per task present."""
    if isinstance(batch, Mapping):
        for t in task_names:
            if t in batch:
                x, y, m = batch[t]
                yield t, x, y, m
    else:
        x, targets = batch
        for t in task_names:
            if t in targets:
                y, m = targets[t]
                yield t, x, y, m
