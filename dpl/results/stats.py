"""Statistics over seeds: what every summary and table of results reports."""
import math

import numpy as np


def mean_std(values, ci95=False):
    """Mean and population std (np.std, ddof=0, as CoOp's ``parse_test_res.py``), or the 95% interval
    1.96·std/√n."""
    values = np.asarray(values, dtype=np.float64)
    std = float(np.std(values))
    if ci95:
        std = 1.96 * std / math.sqrt(len(values))
    return float(np.mean(values)), std


def harmonic_mean(base, new):
    """2·B·N/(B+N): the base-to-novel summary; None when either is missing; 0 when both are 0."""
    if base is None or new is None:
        return None
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)
