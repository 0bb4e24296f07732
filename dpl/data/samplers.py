"""Samplers by name (Dassl's ``build_sampler``). Every random sampler draws from the ``generator``
it is given, so a seeded generator fixes the order.

``EpochSampler`` wraps the training sampler for exact resume: each index it yields carries the seed
of its sample's random augmentation (a function of the epoch's seed and the sample's position in the
epoch), and an epoch can start at a position. So an epoch resumed after its first ``k`` batches sees
the same remaining batches, augmented the same way, whatever the number of loader workers.
"""
import hashlib
import random
from collections import defaultdict

import torch
from torch.utils.data.sampler import RandomSampler, Sampler, SequentialSampler

from dpl.utils.errors import InvalidInputError
from dpl.utils.registry import UnknownNameError

AVAILABLE_SAMPLERS = ("RandomSampler", "SequentialSampler", "RandomClassSampler")


class RandomClassSampler(Sampler):
    """Batches of ``batch_size // n_ins`` random classes with ``n_ins`` random items each (an epoch
    yields as many items as ``data_source``, rounded down to whole class groups)."""

    def __init__(self, data_source, batch_size, n_ins, generator=None):
        if batch_size < n_ins:
            raise InvalidInputError(f"RandomClassSampler: batch size ({batch_size}) must be >= N_INS ({n_ins})")
        self.index_by_label = defaultdict(list)
        for index, item in enumerate(data_source):
            self.index_by_label[item.label].append(index)
        self.labels = list(self.index_by_label)
        self.n_ins = n_ins
        self.n_cls = batch_size // n_ins
        if self.n_cls > len(self.labels):
            raise InvalidInputError(f"RandomClassSampler: {self.n_cls} classes per batch but only {len(self.labels)} classes")
        self.length = len(data_source) // batch_size * batch_size
        self.generator = generator

    def __iter__(self):
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator).item())
        rng = random.Random(seed)
        indices = []
        while len(indices) < self.length:
            for label in rng.sample(self.labels, self.n_cls):
                indices.extend(rng.choices(self.index_by_label[label], k=self.n_ins))
        return iter(indices[: self.length])

    def __len__(self):
        return self.length


class SeededIndex(int):
    """A dataset index that carries the seed of its sample's augmentation (``.seed``).

    It is an ``int``, so datasets that do not know about seeds index with it as usual.
    """

    def __new__(cls, index, seed):
        obj = super().__new__(cls, index)
        obj.seed = seed
        return obj

    def __reduce__(self):  # pickled to the loader's worker processes
        return (SeededIndex, (int(self), self.seed))


def sample_seed(epoch_seed, position):
    """A 63-bit seed of the sample at ``position`` of the epoch seeded with ``epoch_seed``."""
    digest = hashlib.blake2b(f"{epoch_seed}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochSampler(Sampler):
    """Yields the wrapped sampler's indices as ``SeededIndex`` and can start an epoch at a position.

    ``set_epoch(epoch_seed, start)`` before an epoch: per-sample seeds derive from ``epoch_seed``;
    the first ``start`` positions of the next pass are skipped (once). ``len`` stays the full epoch,
    so batch counts and schedules do not change on resume.

    On several processes (``world_size > 1``) the wrapped order is the global one (the same generator
    seed on every process) and ``batch_size`` is the per-process batch: process ``rank`` takes positions
    ``rank * batch_size`` to ``(rank + 1) * batch_size - 1`` of every global batch of
    ``batch_size * world_size``, keeping each sample's seed of its global position. An epoch holds whole
    global batches only (what ``drop_last`` does on one process), and ``start`` counts global positions.
    """

    def __init__(self, sampler, rank=0, world_size=1, batch_size=1):
        self.sampler = sampler
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.epoch_seed = 0
        self.start = 0

    def set_epoch(self, epoch_seed, start=0):
        self.epoch_seed, self.start = epoch_seed, start

    def __iter__(self):
        start, self.start = self.start, 0
        if self.world_size == 1:
            for position, index in enumerate(self.sampler):
                if position >= start:
                    yield SeededIndex(index, sample_seed(self.epoch_seed, position))
            return
        global_batch = self.batch_size * self.world_size
        first, end = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        whole = len(self.sampler) // global_batch * global_batch
        for position, index in enumerate(self.sampler):
            if position >= whole:
                return
            if position >= start and first <= position % global_batch < end:
                yield SeededIndex(index, sample_seed(self.epoch_seed, position))

    def __len__(self):
        if self.world_size == 1:
            return len(self.sampler)
        return len(self.sampler) // (self.batch_size * self.world_size) * self.batch_size


class ShardSampler(Sampler):
    """Process ``rank``'s contiguous share of ``range(length)`` (sizes differ by at most one): the shards
    of all processes, in rank order, are the sequential order, so gathered predictions keep it."""

    def __init__(self, length, rank, world_size):
        self.begin = length * rank // world_size
        self.end = length * (rank + 1) // world_size

    def __iter__(self):
        return iter(range(self.begin, self.end))

    def __len__(self):
        return self.end - self.begin


def build_sampler(sampler_type, cfg=None, data_source=None, batch_size=32, n_domain=0, n_ins=16, generator=None):
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source, generator=generator)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    if sampler_type == "RandomClassSampler":
        return RandomClassSampler(data_source, batch_size, n_ins, generator=generator)
    raise UnknownNameError(f"Unknown sampler type: {sampler_type}; available: {list(AVAILABLE_SAMPLERS)}")
