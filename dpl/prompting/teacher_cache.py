"""The frozen image teacher's features of each training image, computed once when its view is fixed.

Under ``INPUT.TEACHER_VIEW clean`` the teacher sees the test preprocessing of every training image: a
deterministic view through frozen weights, so its features of an image are the same in every epoch (up to
the last bits, which depend on the batch an image is encoded in). The cache computes them the first time an
image is drawn and reuses those numbers afterwards, which saves one frozen image-encoder forward pass per
training step from the second epoch on.

It lives in memory for one run of one trainer (the weights and the view cannot change within it; its
``key`` names both) and in the run's checkpoints (``state_dict``), so a resumed run reuses the same numbers and
continues bit for bit. It is indexed by the dataset index of each training item (Dassl's ``index``), so a
lookup needs no Python loop over the batch and, with the indices on the CPU as the loader yields them, no
wait for the device.
"""
from typing import Callable

import torch


class TeacherFeatureCache:
    """``[num_images, D]`` teacher features, filled on first use.

    key: what the features depend on besides the image (the weights' SHA-256 and the view); a checkpoint's
    cache of another key is not restored. device: where the features live (the teacher's).
    """

    def __init__(self, num_images: int, key: dict, device=None):
        if num_images < 1:
            raise ValueError(f"TeacherFeatureCache needs at least one training image, got {num_images}")
        self.key = dict(key)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.filled = torch.zeros(num_images, dtype=torch.bool)  # CPU: decides what to encode without a sync
        self.features = None  # [num_images, D] on the teacher's device, allocated by the first batch

    @property
    def num_filled(self):
        return int(self.filled.sum())

    def state_dict(self):
        """What a checkpoint keeps: a resumed run then reuses the very numbers it computed (a fresh encoding in
        another batch composition can differ in the last bits), so it continues exactly."""
        return {"key": dict(self.key), "filled": self.filled.clone(),
                "features": None if self.features is None else self.features.detach().cpu()}

    def load_state_dict(self, state):
        """Restore ``state_dict()``; a state of other weights, another view or another training set size is
        ignored (the cache then fills again)."""
        if state["key"] != self.key or state["filled"].shape != self.filled.shape:
            return False
        self.filled = state["filled"].clone()
        self.features = None if state["features"] is None else state["features"].to(self.device)
        return True

    def lookup(self, index: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Features ``[B, D]`` of the dataset items ``index`` ``[B]``.

        ``encode(rows)`` must return the teacher's features ``[len(rows), D]`` of the batch rows ``rows``
        (positions in this batch); it is called once, for the rows not seen before (all rows of a fresh
        batch, so the first epoch computes exactly what it would without the cache).
        """
        index = index.to("cpu", torch.long)
        if int(index.max()) >= self.filled.shape[0] or int(index.min()) < 0:
            raise IndexError(f"dataset index {index.tolist()} outside the {self.filled.shape[0]} training images")
        missing = ~self.filled[index]  # [B]
        if missing.any():
            rows = missing.nonzero().squeeze(1)  # [M] positions in the batch
            fresh = encode(rows).detach()
            if self.features is None:
                self.features = fresh.new_empty(self.filled.shape[0], fresh.shape[1], device=self.device)
            self.features[index[rows].to(self.device)] = fresh.to(self.device)
            self.filled[index[rows]] = True
        return self.features[index.to(self.device)]
