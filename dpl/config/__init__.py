from .defaults import get_cfg_default
from .node import CfgNode

__all__ = ["CfgNode", "get_cfg_default"]
