"""Data pipeline (Dassl's ``dassl.data``): ``DataManager``, ``DatasetWrapper``, ``build_data_loader``.

``DataManager.set_epoch(epoch, seed)`` makes each epoch's training order a function of (seed, epoch).
"""
from .data_manager import DataManager, DatasetWrapper, build_data_loader, epoch_seed, read_image, seed_worker
from .samplers import build_sampler

__all__ = ["DataManager", "DatasetWrapper", "build_data_loader", "build_sampler", "epoch_seed", "read_image",
           "seed_worker"]
