"""Samplers by name (Dassl's ``build_sampler``). Every random sampler draws from the ``generator``
it is given, so a seeded generator fixes the order."""
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


def build_sampler(sampler_type, cfg=None, data_source=None, batch_size=32, n_domain=0, n_ins=16, generator=None):
    if sampler_type == "RandomSampler":
        return RandomSampler(data_source, generator=generator)
    if sampler_type == "SequentialSampler":
        return SequentialSampler(data_source)
    if sampler_type == "RandomClassSampler":
        return RandomClassSampler(data_source, batch_size, n_ins, generator=generator)
    raise UnknownNameError(f"Unknown sampler type: {sampler_type}; available: {list(AVAILABLE_SAMPLERS)}")
