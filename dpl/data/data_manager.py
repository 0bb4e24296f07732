"""``DataManager``, ``DatasetWrapper`` and ``build_data_loader`` (Dassl's ``dassl.data.data_manager``).

Determinism (for exact resume): the training loader draws its order from its own ``torch.Generator``,
and each training sample is augmented under its own seed (``EpochSampler``: a function of the epoch's
seed and the sample's position in the epoch), with the global random generators saved and restored
around it. Call ``DataManager.set_epoch(epoch, seed, start_batch)`` at the start of every epoch: it
re-seeds both from ``(seed, epoch)`` alone, so epoch ``e`` sees the same batches, augmented the same
way, whether the run started at epoch 0, resumed at ``e``, or resumed after ``start_batch`` batches of
``e``, and whatever the number of workers. Augmentation never consumes the global generators, which
thereby stay the model's own (their states are in the checkpoints).
"""
import contextlib
import hashlib
import random
import secrets
import signal

import numpy as np
import torch
from PIL import Image
from tabulate import tabulate
from torch.utils.data import DataLoader, Dataset as TorchDataset
from torchvision import transforms as T

from dpl.engine.distributed import SINGLE_PROCESS, current_world
from dpl.engine.interrupts import STOP_SIGNALS
from dpl.utils.errors import InvalidInputError, UnreadableFileError

from .datasets import build_dataset
from .samplers import EpochSampler, ShardSampler, build_sampler
from .transforms import build_transform, interpolation_mode, teacher_view_transform


def epoch_seed(seed, epoch, purpose="train-loader"):
    """A 63-bit seed that depends only on ``(seed, epoch)`` (and what it seeds: ``purpose``)."""
    digest = hashlib.sha256(f"dpl-{purpose}:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seed_worker(worker_id):
    """``worker_init_fn``: seed ``random`` and NumPy from the worker's torch seed (base seed + id).

    Workers also ignore the stop signals (SIGINT, SIGTERM, SIGUSR2): a Ctrl-C or a scheduler's signal
    reaches the whole process group, and the main process, which stops at the next step boundary, still needs them
    for that step; it shuts them down itself when it stops (``dpl.utils.torchtools.loader_batches``).
    """
    worker_seed = torch.initial_seed() % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@contextlib.contextmanager
def seeded_random_state(seed):
    """Run a block with the CPU torch, Python and NumPy generators seeded with ``seed``, and restore
    their states after it (CUDA generators are left alone)."""
    torch_state, python_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def read_image(path):
    """An RGB PIL image; an error naming the file when it is missing or unreadable."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"Image file not found: {path}") from err
    except OSError as err:
        raise UnreadableFileError(
            f"Cannot read image {path}: {err}. The file is damaged or not an image: replace it from the "
            "original dataset archive"
        ) from err


def build_data_loader(cfg, sampler_type="SequentialSampler", data_source=None, batch_size=64, n_domain=0,
                      n_ins=2, tfm=None, is_train=True, dataset_wrapper=None, generator=None, world=None):
    """A ``DataLoader`` over ``dataset_wrapper(cfg, data_source, transform=tfm, is_train=is_train)``.

    ``drop_last`` only for training sets holding at least one full batch (Dassl). ``generator`` (train
    loader) drives the sampler and the workers' base seed; a training sampler is wrapped in an
    ``EpochSampler`` (per-sample augmentation seeds, resumable start position).

    On several processes (``world``, a ``dpl.engine.distributed.World``) ``batch_size`` stays the global
    batch: a training loader yields this process's share of each one (``batch_size / world.size``), an
    evaluation loader this process's contiguous shard of the split.
    """
    if not data_source:
        raise InvalidInputError(
            f"Cannot build a {'training' if is_train else 'evaluation'} data loader: the split is empty "
            f"(dataset {cfg.DATASET.NAME}, DATASET.NUM_SHOTS={cfg.DATASET.NUM_SHOTS}, "
            f"SUBSAMPLE_CLASSES={cfg.DATASET.SUBSAMPLE_CLASSES}). Check DATASET.ROOT or run "
            "`python -m dpl.tools.check_data --root DATA`."
        )
    world = world or SINGLE_PROCESS
    sampler = build_sampler(sampler_type, cfg=cfg, data_source=data_source, batch_size=batch_size,
                            n_domain=n_domain, n_ins=n_ins, generator=generator)
    if is_train and world.distributed:  # training checks that the global batch divides (evaluations need not)
        batch_size = max(1, batch_size // world.size)
        sampler = EpochSampler(sampler, rank=world.rank, world_size=world.size, batch_size=batch_size)
    elif is_train:
        sampler = EpochSampler(sampler)
    elif world.distributed:
        if sampler_type != "SequentialSampler":
            raise InvalidInputError(f"DATALOADER.TEST.SAMPLER is {sampler_type}: an evaluation on several "
                                    "processes shards the split in order; use SequentialSampler")
        sampler = ShardSampler(len(data_source), world.rank, world.size)
    wrapper = dataset_wrapper or DatasetWrapper
    num_workers = cfg.DATALOADER.NUM_WORKERS
    return DataLoader(
        wrapper(cfg, data_source, transform=tfm, is_train=is_train),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=is_train and len(data_source) >= batch_size,
        pin_memory=cfg.USE_CUDA and torch.cuda.is_available(),
        worker_init_fn=seed_worker if num_workers > 0 else None,
        generator=generator,
    )


def check_global_batch(batch_size, processes):
    """A training batch shared by ``processes`` must divide among them (checked before training)."""
    if batch_size % processes:
        raise InvalidInputError(
            f"DATALOADER.TRAIN_X.BATCH_SIZE {batch_size} is the global batch and does not divide among "
            f"{processes} processes: use a multiple of {processes}, or another number of processes")


def check_training_batches(loader, processes):
    """Several processes train on whole global batches only: the training set must hold one."""
    if processes > 1 and len(loader) == 0:
        batch = loader.batch_size * processes
        raise InvalidInputError(
            f"the training set has {len(loader.dataset)} images, fewer than one global batch "
            f"(DATALOADER.TRAIN_X.BATCH_SIZE {batch}): several processes need at least one full batch; "
            "lower the batch size or train on one process")


class DataManager:
    """Dataset + loaders (``train_loader_x``, ``train_loader_u``, ``val_loader``, ``test_loader``).

    Call :meth:`set_epoch` at the start of each epoch for a training order that depends only on
    ``(seed, epoch)``.
    """

    def __init__(self, cfg, custom_tfm_train=None, custom_tfm_test=None, dataset_wrapper=None, world=None):
        self.cfg = cfg
        # the processes of the run (``torchrun``): each loads its share of the batches and of the test set
        self.world = world = world or current_world()
        dataset = build_dataset(cfg)
        tfm_train = self._transform(cfg, custom_tfm_train, is_train=True)
        tfm_test = self._transform(cfg, custom_tfm_test, is_train=False)
        dl = cfg.DATALOADER
        # The seed of the data order and augmentation: SEED, or for an unseeded run one drawn now. A trainer
        # keeps it in its checkpoints (``data_seed``), so an unseeded run also resumes exactly.
        self.data_seed = cfg.SEED if cfg.SEED >= 0 else secrets.randbits(62)
        self.train_generator = torch.Generator()

        self.train_loader_x = build_data_loader(
            cfg, sampler_type=dl.TRAIN_X.SAMPLER, data_source=dataset.train_x, batch_size=dl.TRAIN_X.BATCH_SIZE,
            n_domain=dl.TRAIN_X.N_DOMAIN, n_ins=dl.TRAIN_X.N_INS, tfm=tfm_train, is_train=True,
            dataset_wrapper=dataset_wrapper, generator=self.train_generator, world=world)
        self.train_loader_u = None
        if dataset.train_u:
            u = dl.TRAIN_X if dl.TRAIN_U.SAME_AS_X else dl.TRAIN_U
            self.train_loader_u = build_data_loader(
                cfg, sampler_type=u.SAMPLER, data_source=dataset.train_u, batch_size=u.BATCH_SIZE,
                n_domain=u.N_DOMAIN, n_ins=u.N_INS, tfm=tfm_train, is_train=True,
                dataset_wrapper=dataset_wrapper, generator=self.train_generator, world=world)
        self.val_loader = None
        if dataset.val:
            self.val_loader = self._eval_loader(cfg, dataset.val, tfm_test, dataset_wrapper, world)
        self.test_loader = self._eval_loader(cfg, dataset.test, tfm_test, dataset_wrapper, world)

        self._num_classes = dataset.num_classes
        self._num_source_domains = len(cfg.DATASET.SOURCE_DOMAINS)
        self._lab2cname = dataset.lab2cname
        self.dataset = dataset
        self.tfm_train = tfm_train
        self.tfm_test = tfm_test
        self.set_epoch(0)
        if cfg.VERBOSE:
            self.show_dataset_summary(cfg)

    @staticmethod
    def _transform(cfg, custom, is_train):
        if custom is None:
            return build_transform(cfg, is_train=is_train)
        print(f"* Using custom transform for {'training' if is_train else 'testing'}")
        return custom

    @staticmethod
    def _eval_loader(cfg, data_source, tfm, dataset_wrapper, world):
        # Its own generator: iterating it must not consume the global torch RNG (the training
        # randomness after an evaluation would otherwise depend on how often one evaluated).
        return build_data_loader(cfg, sampler_type=cfg.DATALOADER.TEST.SAMPLER, data_source=data_source,
                                 batch_size=cfg.DATALOADER.TEST.BATCH_SIZE, tfm=tfm, is_train=False,
                                 dataset_wrapper=dataset_wrapper, generator=torch.Generator().manual_seed(0),
                                 world=world)

    def set_epoch(self, epoch, seed=None, start_batch=0):
        """Re-seed the training order, the workers' seeds and the per-sample augmentation seeds from
        ``(seed, epoch)``, and let the next pass over ``train_loader_x`` start after ``start_batch``
        batches (a mid-epoch resume). ``seed`` defaults to ``data_seed`` (``cfg.SEED``, or the seed an
        unseeded run drew)."""
        seed = self.data_seed if seed is None else seed
        self.train_generator.manual_seed(epoch_seed(seed, epoch))
        augmentation_seed = epoch_seed(seed, epoch, "augmentation")
        for loader, start in ((self.train_loader_x, start_batch), (self.train_loader_u, 0)):
            if loader is not None and isinstance(loader.sampler, EpochSampler):  # positions in the global order
                loader.sampler.set_epoch(augmentation_seed, start * loader.batch_size * self.world.size)

    @property
    def num_classes(self):
        return self._num_classes

    @property
    def num_source_domains(self):
        return self._num_source_domains

    @property
    def lab2cname(self):
        return self._lab2cname

    def show_dataset_summary(self, cfg):
        table = [["Dataset", cfg.DATASET.NAME]]
        if cfg.DATASET.SOURCE_DOMAINS:
            table.append(["Source", cfg.DATASET.SOURCE_DOMAINS])
        if cfg.DATASET.TARGET_DOMAINS:
            table.append(["Target", cfg.DATASET.TARGET_DOMAINS])
        table.append(["# classes", f"{self.num_classes:,}"])
        table.append(["# train_x", f"{len(self.dataset.train_x):,}"])
        if self.dataset.train_u:
            table.append(["# train_u", f"{len(self.dataset.train_u):,}"])
        if self.dataset.val:
            table.append(["# val", f"{len(self.dataset.val):,}"])
        table.append(["# test", f"{len(self.dataset.test):,}"])
        print(tabulate(table))


class DatasetWrapper(TorchDataset):
    """Items as dicts ``{"label", "domain", "impath", "index", "img"}`` (Dassl's keys).

    A list of transforms gives ``img``, ``img2``, ...; ``DATALOADER.K_TRANSFORMS > 1`` (training) gives
    a list of K views per key; ``DATALOADER.RETURN_IMG0`` adds ``img0`` (resized, not augmented);
    ``INPUT.TEACHER_VIEW clean`` adds ``img_teacher`` to training items (the test preprocessing, for a frozen
    image teacher).
    """

    def __init__(self, cfg, data_source, transform=None, is_train=False):
        self.cfg = cfg
        self.data_source = data_source
        self.transform = transform
        self.is_train = is_train
        self.k_tfm = cfg.DATALOADER.K_TRANSFORMS if is_train else 1
        self.return_img0 = cfg.DATALOADER.RETURN_IMG0
        self.teacher_view = teacher_view_transform(cfg, is_train)
        if self.k_tfm > 1 and transform is None:
            raise InvalidInputError(f"DATALOADER.K_TRANSFORMS = {self.k_tfm} needs a transform to apply K times")
        img0 = [T.Resize(tuple(cfg.INPUT.SIZE), interpolation=interpolation_mode(cfg.INPUT.INTERPOLATION)),
                T.ToTensor()]
        if "normalize" in cfg.INPUT.TRANSFORMS:
            img0.append(T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
        self.to_tensor = T.Compose(img0)

    def __len__(self):
        return len(self.data_source)

    def __getitem__(self, idx):
        item = self.data_source[idx]
        output = {"label": item.label, "domain": item.domain, "impath": item.impath, "index": int(idx)}
        img0 = read_image(item.impath)
        seed = getattr(idx, "seed", None)  # training samples carry their augmentation seed (EpochSampler)
        with seeded_random_state(seed) if seed is not None else contextlib.nullcontext():
            self._augment(img0, output)
        return output

    def _augment(self, img0, output):
        if self.transform is None:
            output["img"] = img0
        elif isinstance(self.transform, (list, tuple)):
            for i, tfm in enumerate(self.transform):
                output["img" if i == 0 else f"img{i + 1}"] = self._apply(tfm, img0)
        else:
            output["img"] = self._apply(self.transform, img0)
        if self.return_img0:
            output["img0"] = self.to_tensor(img0)
        if self.teacher_view is not None:
            output["img_teacher"] = self.teacher_view(img0)

    def _apply(self, tfm, img0):
        views = [tfm(img0) for _ in range(self.k_tfm)]
        return views[0] if len(views) == 1 else views
