"""Class subsampling: the base/new protocol and the long-tail (imbalanced) training profile.

Long-tail groups (our choice, the reference code defines none): a class's group is read from its
training-image count ``n_c`` on a log scale between the largest count ``n_max`` and the smallest
``n_min`` of the training set, ``t = log(n_max / n_c) / log(n_max / n_min)``:
``many`` for ``t < 1/3``, ``medium`` for ``1/3 <= t <= 2/3``, ``few`` for ``t > 2/3``. On the
exponential profile this gives each group about a third of the classes, whatever the dataset's size
(the absolute thresholds of ImageNet-LT, >100 / 20-100 / <20 images, would leave most CoOp datasets
without a single "many" class). A training set with equal counts has only ``many`` classes.
"""
import math
import random
from collections import Counter, defaultdict

from dpl.results.schema import LONG_TAIL_GROUPS  # noqa: F401  (re-exported: the group names, head to tail)
from dpl.utils.errors import InvalidInputError

from .datum import Datum

SUBSAMPLE_CHOICES = ("all", "base", "new")
LONG_TAIL_GROUP_THRESHOLDS = (1 / 3, 2 / 3)


def subsample_classes(*splits, subsample="all"):
    """Keep the base (first ``ceil(n/2)``) or new (remaining) labels of the first split, relabelled.

    Labels are the sorted labels present in ``splits[0]``; every split is filtered to the selected
    labels and relabelled ``0..m-1`` in label order (class names kept). ``all`` returns the splits.
    """
    if subsample not in SUBSAMPLE_CHOICES:
        raise InvalidInputError(f'DATASET.SUBSAMPLE_CLASSES must be one of {list(SUBSAMPLE_CHOICES)}, got "{subsample}".')
    if subsample == "all":
        return splits
    labels = sorted({item.label for item in splits[0]})
    m = math.ceil(len(labels) / 2)
    print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    selected = labels[:m] if subsample == "base" else labels[m:]
    relabel = {label: new for new, label in enumerate(selected)}
    return [
        [Datum(impath=item.impath, label=relabel[item.label], domain=item.domain, classname=item.classname)
         for item in split if item.label in relabel]
        for split in splits
    ]


def long_tail_profile(n_max, num_classes, ratio):
    """``n_i = ceil(max(n_max * ratio^(-i/(C-1)), 1))`` for ranks ``i = 0..C-1``."""
    if num_classes == 1:
        return [n_max]
    return [math.ceil(max(n_max * ratio ** (-i / (num_classes - 1)), 1)) for i in range(num_classes)]


def subsample_long_tail(train, ratio, seed):
    """Subsample ``train`` to the exponential long-tail profile with max/min ratio ``ratio``.

    Classes are ranked by descending training count (ties: lower label first); the class of rank i
    keeps ``min(n_i, available)`` items drawn with ``random.Random(seed)`` (independent of the global
    state; ``seed < 0`` draws unseeded), in their original order. Prints the ratio obtained.
    """
    if ratio < 1:
        raise InvalidInputError(f"DATASET.IMBALANCE_RATIO must be >= 1 (1 = balanced), got {ratio}.")
    indices = defaultdict(list)  # label -> positions in train
    for position, item in enumerate(train):
        indices[item.label].append(position)
    ranked = sorted(indices, key=lambda label: (-len(indices[label]), label))
    targets = long_tail_profile(len(indices[ranked[0]]), len(ranked), ratio)
    rng = random.Random(seed if seed >= 0 else None)
    kept = set()
    for label, target in zip(ranked, targets):
        kept.update(rng.sample(indices[label], min(target, len(indices[label]))))
    subsampled = [train[position] for position in sorted(kept)]
    counts = Counter(item.label for item in subsampled).values()
    print(f"Generated imbalance ratio: {max(counts) / min(counts):.2f} (requested {ratio:g})")
    return subsampled


def long_tail_groups(train_x):
    """``{label: "many" | "medium" | "few"}`` from the training counts (thresholds: module docstring)."""
    counts = Counter(item.label for item in train_x)
    n_max, n_min = max(counts.values()), min(counts.values())
    low, high = LONG_TAIL_GROUP_THRESHOLDS
    groups = {}
    for label in sorted(counts):
        t = 0.0 if n_max == n_min else math.log(n_max / counts[label]) / math.log(n_max / n_min)
        groups[label] = "many" if t < low else ("few" if t > high else "medium")
    return groups
