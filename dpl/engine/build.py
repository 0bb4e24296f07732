"""``TRAINER_REGISTRY``, ``build_trainer`` and the per-trainer config nodes (``extend_cfg``)."""
from dpl.project import import_project_modules
from dpl.utils.registry import Registry, check_availability

TRAINER_REGISTRY = Registry("TRAINER")


def build_trainer(cfg):
    """The trainer class named by ``cfg.TRAINER.NAME`` (registry key = class name), constructed with ``cfg``."""
    import_project_modules()
    name = cfg.TRAINER.NAME
    check_availability(name, TRAINER_REGISTRY.registered_names(), "trainer (--trainer / TRAINER.NAME)")
    if cfg.VERBOSE:
        print(f"Loading trainer: {name}")
    return TRAINER_REGISTRY.get(name)(cfg)


def extend_cfg_for_all_trainers(cfg):
    """Add every registered trainer's config node to ``cfg`` (before any YAML is merged).

    Calls the ``extend_cfg(cfg)`` classmethod of each registered trainer class that defines one
    itself (an inherited ``extend_cfg`` is called once, for the class that defines it), in
    registration order. ``cfg`` must not be frozen.
    """
    import_project_modules()
    called = set()
    for name in TRAINER_REGISTRY.registered_names():
        for klass in TRAINER_REGISTRY.get(name).__mro__:
            if "extend_cfg" in klass.__dict__ and klass not in called:
                called.add(klass)
                klass.extend_cfg(cfg)
    return cfg
