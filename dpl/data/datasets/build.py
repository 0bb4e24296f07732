"""``DATASET_REGISTRY`` and ``build_dataset`` (Dassl: ``dassl.data.datasets.build``)."""
from dpl.utils.registry import Registry, check_availability

DATASET_REGISTRY = Registry("DATASET")


def build_dataset(cfg):
    """The dataset registered under ``cfg.DATASET.NAME`` (a class name, e.g. ``DescribableTextures``).

    Imports the project's ``datasets/`` folder first, so loaders need no import line anywhere.
    """
    from dpl.project import PROJECT_PACKAGES, broken_leaves_note, import_project_modules

    import_project_modules()
    available = DATASET_REGISTRY.registered_names()
    check_availability(cfg.DATASET.NAME, available, "dataset (DATASET.NAME)",
                       broken_leaves_note(PROJECT_PACKAGES["dpl_datasets"]))
    if cfg.VERBOSE:
        print(f"Loading dataset: {cfg.DATASET.NAME}")
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)
