"""Dassl's few-shot draw, reproduced call for call.

For a given state of the random generator (by default Python's global ``random``, which
``set_random_seed(cfg.SEED)`` seeds), the items drawn here are the items Dassl's
``DatasetBase.generate_fewshot_dataset`` draws: labels are visited in order of first appearance in
the source, the items of a label in source order, and each label consumes exactly one
``random.sample`` (or ``random.choices`` with ``repeat``) call, none when it has too few items.
"""
import random
from collections import defaultdict


def group_by_label(data_source):
    """``{label: [items]}``, labels in order of first appearance, items in source order."""
    groups = defaultdict(list)
    for item in data_source:
        groups[item.label].append(item)
    return groups


def _draw(items, num_shots, repeat, rng):
    if len(items) >= num_shots:
        return rng.sample(items, num_shots)
    if repeat:
        return rng.choices(items, k=num_shots)
    return items


def sample_fewshot(*data_sources, num_shots=-1, repeat=False, rng=random):
    """Keep ``num_shots`` random items per label of each source (all of them where fewer exist).

    Returns one list per source (a single list when one source is given); ``num_shots < 1`` returns
    the sources unchanged. Prints Dassl's ``Creating a {K}-shot dataset``.
    """
    if num_shots < 1:
        return data_sources[0] if len(data_sources) == 1 else data_sources
    print(f"Creating a {num_shots}-shot dataset")
    output = []
    for data_source in data_sources:
        sampled = []
        for items in group_by_label(data_source).values():
            sampled.extend(_draw(items, num_shots, repeat, rng))
        output.append(sampled)
    return output[0] if len(output) == 1 else output
