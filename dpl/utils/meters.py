"""Running averages for the training loop (Dassl's ``AverageMeter`` / ``MetricMeter``)."""
from collections import defaultdict

import torch


class AverageMeter:
    """The latest value and the running average of a scalar.

    With ``ema=True`` the average is an exponential moving average (weight 0.9 on the past).
    """

    def __init__(self, ema=False):
        self.ema = ema
        self.reset()

    def reset(self):
        self.val = 0.0
        self.avg = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val, n=1):
        if isinstance(val, torch.Tensor):
            val = val.item()
        self.val = val
        self.sum += val * n
        self.count += n
        if self.ema:
            self.avg = val if self.count == n else self.avg * 0.9 + val * 0.1
        else:
            self.avg = self.sum / self.count


class MetricMeter:
    """A named set of ``AverageMeter``s; ``str()`` gives ``"loss 1.2345 (1.3456) acc ..."``."""

    def __init__(self, delimiter=" "):
        self.meters = defaultdict(AverageMeter)
        self.delimiter = delimiter

    def update(self, input_dict):
        if input_dict is None:
            return
        if not isinstance(input_dict, dict):
            raise TypeError(f"MetricMeter.update() expects a dict of scalars, got {type(input_dict).__name__}")
        for name, value in input_dict.items():
            if isinstance(value, torch.Tensor):
                value = value.item()
            self.meters[name].update(value)

    def __str__(self):
        return self.delimiter.join(f"{name} {meter.val:.4f} ({meter.avg:.4f})" for name, meter in self.meters.items())
