"""``Datum`` and ``DatasetBase``: Dassl's dataset containers (``dassl.data.datasets.base_dataset``).

Differences from Dassl, on purpose:
- ``Datum`` does not stat its image at construction (Dassl asserts the file exists, which is slow on
  network storage and fails with a bare ``AssertionError``). Existence is checked once per dataset,
  cheaply, by :func:`dpl.data.datasets.splits.check_image_files`.
- ``Datum`` compares by value, which makes sampled splits easy to compare.
- No ``download_data`` (Dassl's needs gdown; CoOp's loaders never call it).
"""
from collections import defaultdict

from dpl.utils.errors import InvalidInputError

from .datum import Datum  # noqa: F401  (Dassl's import path)
from .sampling import group_by_label, sample_fewshot
from .splits import read_and_split_data, read_split, save_split, split_trainval
from .subsample import subsample_classes


class DatasetBase:
    """A dataset = lists of :class:`Datum` for ``train_x``, ``train_u``, ``val`` and ``test``.

    ``num_classes`` is ``max(label in train_x) + 1``; ``lab2cname`` / ``classnames`` come from
    ``train_x`` in label order (as in Dassl). The static helpers below are the ones CoOp loaders call
    (``OxfordPets.read_split`` etc. upstream); they live here once so ported loaders find them on any
    dataset class.
    """

    dataset_dir = ""  # the directory where the dataset is stored (relative to DATASET.ROOT)
    domains = []  # string names of all domains (domain-generalisation datasets only)

    def __init__(self, train_x=None, train_u=None, val=None, test=None):
        self._train_x = train_x
        self._train_u = train_u
        self._val = val
        self._test = test
        self._num_classes = self.get_num_classes(train_x) if train_x else 0
        self._lab2cname, self._classnames = self.get_lab2cname(train_x) if train_x else ({}, [])

    @property
    def train_x(self):
        return self._train_x

    @property
    def train_u(self):
        return self._train_u

    @property
    def val(self):
        return self._val

    @property
    def test(self):
        return self._test

    @property
    def lab2cname(self):
        return self._lab2cname

    @property
    def classnames(self):
        return self._classnames

    @property
    def num_classes(self):
        return self._num_classes

    @staticmethod
    def get_num_classes(data_source):
        return max(item.label for item in data_source) + 1

    @staticmethod
    def get_lab2cname(data_source):
        """``({label: classname}, [classname in label order])`` of the labels present in ``data_source``."""
        mapping = {item.label: item.classname for item in data_source}
        labels = sorted(mapping)
        return {label: mapping[label] for label in labels}, [mapping[label] for label in labels]

    def check_input_domains(self, source_domains, target_domains):
        for domain in list(source_domains) + list(target_domains):
            if domain not in self.domains:
                raise InvalidInputError(
                    f'Input domain "{domain}" is not one of the domains of {type(self).__name__}: {self.domains}'
                )

    def generate_fewshot_dataset(self, *data_sources, num_shots=-1, repeat=False):
        """Dassl's few-shot draw with the global ``random`` state (see :func:`sampling.sample_fewshot`)."""
        return sample_fewshot(*data_sources, num_shots=num_shots, repeat=repeat)

    @staticmethod
    def split_dataset_by_label(data_source):
        """``{label: [items]}`` with labels in order of first appearance, items in source order."""
        return group_by_label(data_source)

    @staticmethod
    def split_dataset_by_domain(data_source):
        output = defaultdict(list)
        for item in data_source:
            output[item.domain].append(item)
        return output

    # CoOp's shared static helpers (upstream they live on OxfordPets / DescribableTextures).
    read_split = staticmethod(read_split)
    save_split = staticmethod(save_split)
    read_and_split_data = staticmethod(read_and_split_data)
    split_trainval = staticmethod(split_trainval)
    subsample_classes = staticmethod(subsample_classes)
