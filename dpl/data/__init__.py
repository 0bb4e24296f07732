"""Data pipeline (Dassl's ``dassl.data``): ``DataManager``, ``DatasetWrapper``, ``build_data_loader``.

``DataManager.set_epoch(epoch, seed)`` makes each epoch's training order a function of (seed, epoch).
"""
from .data_manager import DataManager, DatasetWrapper, build_data_loader, epoch_seed, read_image, seed_worker
from .image_check import check_training_images, find_unreadable_images, unreadable_images_message
from .samplers import build_sampler

__all__ = ["DataManager", "DatasetWrapper", "build_data_loader", "build_sampler", "epoch_seed", "read_image",
           "seed_worker"]
__all__ += ["check_training_images", "find_unreadable_images", "unreadable_images_message"]
