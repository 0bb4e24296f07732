"""Image transforms (Dassl's ``dassl.data.transforms``): ``build_transform(cfg, is_train)``."""
from .transforms import (AVAILABLE_TRANSFORMS, INTERPOLATION_MODES, build_transform, interpolation_mode,
                         teacher_view_transform)

__all__ = ["build_transform", "AVAILABLE_TRANSFORMS", "INTERPOLATION_MODES", "interpolation_mode",
           "teacher_view_transform"]
