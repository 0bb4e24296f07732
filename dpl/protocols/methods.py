"""The methods of ``scripts/<method>/``: the trainer and the config of each protocol (``method.sh``).

``method.sh`` holds ``KEY=value`` lines: ``TRAINER=<Trainer>`` and ``CFG_<PROTOCOL>[_<KEY>]=<config
name>``, e.g. ``CFG_BASE2NEW=vit_b16_ctxv1`` and ``CFG_BASE2NEW_IMAGENET=vit_b16_ep50_ctxv1``. Every
folder of ``scripts/`` with a ``method.sh`` is a method.
"""
import os
import re
from dataclasses import dataclass, field
from typing import Dict

from dpl.project import PROJECT_ROOT

SCRIPTS_DIR = PROJECT_ROOT / "scripts"
METHOD_FILE = "method.sh"
_ASSIGNMENT = re.compile(r"([A-Z][A-Z0-9_]*)=(\S*)")


class ProtocolError(Exception):
    """A mistake in a protocol script's arguments or environment; printed as one line by the script."""


@dataclass
class Method:
    """One ``scripts/<name>/`` folder."""

    name: str
    folder: str
    trainer: str
    configs: Dict[str, str] = field(default_factory=dict)  # CFG_* variables

    @property
    def training_free(self):
        """A trainer that does not train (its class sets ``TRAINING_FREE``, e.g. zero-shot CLIP): deterministic,
        so one seed's run is enough."""
        from dpl.engine import TRAINER_REGISTRY
        from dpl.project import import_project_modules

        import_project_modules()
        trainer = TRAINER_REGISTRY.get(self.trainer) if self.trainer in TRAINER_REGISTRY else None
        return bool(getattr(trainer, "TRAINING_FREE", False))

    def has_script(self, script):
        return os.path.isfile(os.path.join(self.folder, script))

    def config_name(self, protocol, *keys, override=""):
        """``override`` if set, else the first of ``CFG_<PROTOCOL>_<KEY>`` for ``keys`` in order, else
        ``CFG_<PROTOCOL>``."""
        if override:
            return override
        for key in keys:
            name = self.configs.get(f"CFG_{protocol}_{str(key).upper()}")
            if name:
                return name
        name = self.configs.get(f"CFG_{protocol}")
        if not name:
            raise ProtocolError(f"{self.trainer} has no config for this protocol "
                                f"(no CFG_{protocol} in {os.path.join(self.folder, METHOD_FILE)})")
        return name


def read_method(folder):
    """The ``Method`` of a ``scripts/<name>/`` folder (its ``method.sh``)."""
    path = os.path.join(folder, METHOD_FILE)
    values = {}
    with open(path, "r") as f:
        for line in f:
            match = _ASSIGNMENT.fullmatch(line.strip())
            if match:
                values[match.group(1)] = match.group(2)
    if not values.get("TRAINER"):
        raise ProtocolError(f"{path} sets no TRAINER=<trainer name>")
    configs = {k: v for k, v in values.items() if k.startswith("CFG_")}
    return Method(os.path.basename(os.path.normpath(folder)), str(folder), values["TRAINER"], configs)


def available_methods(scripts_dir=SCRIPTS_DIR):
    """Every method folder of ``scripts_dir`` (a folder with a ``method.sh``), by name: a new method is a
    new folder, which every command that lists methods (``scripts/run_protocol.py --methods``) knows."""
    names = sorted(entry for entry in os.listdir(scripts_dir)
                   if os.path.isfile(os.path.join(scripts_dir, entry, METHOD_FILE)))
    return {name: read_method(os.path.join(scripts_dir, name)) for name in names}
