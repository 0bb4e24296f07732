"""Dassl's few-shot draw, reproduced call for call.

For a given state of the random generator (by default Python's global ``random``, which
``set_random_seed(cfg.SEED)`` seeds), the items drawn here are the items Dassl's
``DatasetBase.generate_fewshot_dataset`` draws: labels are visited in order of first appearance in
the source, the items of a label in source order, and each label consumes exactly one
``random.sample`` (or ``random.choices`` with ``repeat``) call, none when it has too few items.

A label with fewer than ``num_shots`` items keeps all of them (Dassl's behaviour) and one warning line
names how many labels are short, so a "16-shot" result on such a dataset is not taken at face value.
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


def _warn_short_labels(groups, num_shots, repeat):
    """One line when some labels have fewer than ``num_shots`` items (``groups``: label -> items)."""
    short = [(items[0].classname or label, len(items)) for label, items in groups.items() if len(items) < num_shots]
    if not short:
        return
    examples = ", ".join(f"{name}: {count}" for name, count in short[:3]) + (", ..." if len(short) > 3 else "")
    kept = ("their images are drawn with repetition" if repeat
            else f"all of their images are used, so they get fewer than {num_shots} shots")
    print(f"WARNING: {len(short)} of {len(groups)} classes have fewer than {num_shots} images ({examples}); {kept}")


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
        groups = group_by_label(data_source)
        for items in groups.values():
            sampled.extend(_draw(items, num_shots, repeat, rng))
        _warn_short_labels(groups, num_shots, repeat)
        output.append(sampled)
    return output[0] if len(output) == 1 else output
