"""``DATASET_REGISTRY`` and ``build_dataset`` (Dassl: ``dassl.data.datasets.build``)."""
from dpl.utils.registry import Registry, check_availability

DATASET_REGISTRY = Registry("DATASET")


def build_dataset(cfg):
    """The dataset registered under ``cfg.DATASET.NAME`` (a class name, e.g. ``DescribableTextures``).

    A look-up, as Dassl's; the project's ``datasets/`` folder is imported when the name is not registered
    yet, so loaders need no import line anywhere (a caller's own registered loaders are kept).
    """
    from dpl.project import broken_leaves_note, import_project_modules

    if cfg.DATASET.NAME not in DATASET_REGISTRY:
        import_project_modules()
    available = DATASET_REGISTRY.registered_names()
    check_availability(cfg.DATASET.NAME, available, "dataset (DATASET.NAME)",
                       broken_leaves_note())
    if cfg.VERBOSE:
        print(f"Loading dataset: {cfg.DATASET.NAME}")
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)
