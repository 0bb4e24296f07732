"""Tiny synthetic copies of the 15 CoOp datasets, in each dataset's exact upstream layout.

Main entry point (the fixture other tests build on)::

    from tests.datagen import make_dataset, dataset_cfg
    dataset_dir = make_dataset(tmp_path, "dtd", n_classes=4, per_class=6)   # -> tmp_path / "dtd"
    cfg = dataset_cfg(tmp_path, "dtd", num_shots=2, subsample="base", seed=1)
    dm = DataManager(cfg)

- ``root`` plays the role of ``$DATA``; the dataset folder is created under it with upstream's name
  (``dtd/``, ``caltech-101/``, ``imagenet-adversarial/`` ...), images as 32x32 JPEGs by default.
- Images are class-discriminative: each class has its own colour and stripe pattern, plus mild
  noise, so a model can learn them in a few steps.
- Each class gets ``per_class`` images (>= 3), split per class into train/val/test as
  ``max(1, round(0.5 n))`` / ``max(1, round(0.2 n))`` / the rest; a split file in the upstream
  schema where upstream uses one, and the raw annotation files (txt / mat / json) the loaders read
  when regenerating a split. ImageNet: train = all but ``max(1, n // 3)``, which go to ``images/val``.
- ``expected_classnames(stem, n_classes)`` gives the class names the loader must produce, in label
  order; ``DATASET_NAMES[stem]`` the registered class name. Fast: DTD with 4 x 6 images takes ~10 ms.
"""
import colorsys
import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

DATASET_NAMES = {
    "imagenet": "ImageNet", "caltech101": "Caltech101", "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars", "oxford_flowers": "OxfordFlowers", "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft", "sun397": "SUN397", "dtd": "DescribableTextures", "eurosat": "EuroSAT",
    "ucf101": "UCF101", "imagenetv2": "ImageNetV2", "imagenet_sketch": "ImageNetSketch",
    "imagenet_a": "ImageNetA", "imagenet_r": "ImageNetR",
}
STEMS = tuple(DATASET_NAMES)
DATASET_DIRS = {
    "imagenet": "imagenet", "caltech101": "caltech-101", "oxford_pets": "oxford_pets",
    "stanford_cars": "stanford_cars", "oxford_flowers": "oxford_flowers", "food101": "food-101",
    "fgvc_aircraft": "fgvc_aircraft", "sun397": "sun397", "dtd": "dtd", "eurosat": "eurosat", "ucf101": "ucf101",
    "imagenetv2": "imagenetv2", "imagenet_sketch": "imagenet-sketch", "imagenet_a": "imagenet-adversarial",
    "imagenet_r": "imagenet-rendition",
}
DEFAULT_N_CLASSES = 4

# Raw names (folders / annotation entries) as the real datasets spell them.
_DTD = ["banded", "blotchy", "braided", "bubbly", "bumpy", "chequered", "cobwebbed", "cracked", "crosshatched", "dotted"]
_CALTECH = ["accordion", "airplanes", "anchor", "Faces", "Leopards", "Motorbikes", "ant", "barrel", "bass", "beaver"]
_CALTECH_RENAMED = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
_CALTECH_IGNORED = ["BACKGROUND_Google", "Faces_easy"]
_PETS = ["Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "Bengal", "Birman",
         "beagle", "Bombay", "boxer", "British_Shorthair"]
_CARS = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012", "Audi R8 Coupe 2012",
         "BMW M3 Coupe 2012", "Bugatti Veyron 16.4 Coupe 2009", "Chevrolet Malibu Sedan 2007",
         "Dodge Caliber Wagon 2012", "Ford GT Coupe 2006", "Honda Odyssey Minivan 2012"]
_FLOWERS = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea", "english marigold",
            "tiger lily", "moon orchid", "bird of paradise", "monkshood", "globe thistle"]
_FOOD = ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare", "beet_salad", "beignets",
         "bibimbap", "bread_pudding", "breakfast_burrito"]
# Deliberately not alphabetical: the label order is variants.txt's order.
_AIRCRAFT = ["Cessna 172", "707-320", "A300B4", "F-16A/B", "DC-3", "Boeing 717", "ATR-42", "Hawk T1", "MD-11", "BAE 146-200"]
_SUN = ["/a/abbey", "/b/balcony/exterior", "/a/airplane_cabin", "/b/balcony/interior", "/c/campsite",
        "/a/apartment_building/outdoor", "/b/bakery/shop", "/c/canyon", "/d/dam", "/e/elevator/door"]
_EUROSAT = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
            "Residential", "River", "SeaLake"]
_EUROSAT_NAMES = {"AnnualCrop": "Annual Crop Land", "Forest": "Forest",
                  "HerbaceousVegetation": "Herbaceous Vegetation Land", "Highway": "Highway or Road",
                  "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
                  "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings",
                  "River": "River", "SeaLake": "Sea or Lake"}
_UCF = ["ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling", "BalanceBeam", "BandMarching",
        "BaseballPitch", "Basketball", "BasketballDunk", "BenchPress"]
_IMAGENET = [("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark"),
             ("n01491361", "tiger shark"), ("n01494475", "hammerhead shark"), ("n01496331", "electric ray"),
             ("n01498041", "stingray"), ("n01514668", "rooster"), ("n01514859", "hen"), ("n01518878", "ostrich"),
             ("n01530575", "brambling"), ("n01531178", "goldfinch"), ("n01532829", "house finch"),
             ("n01534433", "junco"), ("n01537544", "indigo bunting"), ("n01558993", "American robin"),
             ("n01560419", "bulbul"), ("n01580077", "jay"), ("n01582220", "magpie"), ("n01592084", "chickadee")]


def _names(table, n, fmt):
    """The first ``n`` names of ``table``, extended with ``fmt.format(i)`` when ``n`` is larger."""
    return (list(table) + [fmt.format(i) for i in range(len(table), n)])[:n]


def _imagenet_classes(n):
    extra = [(f"n0{2000000 + i:07d}", f"synthetic class {i}") for i in range(len(_IMAGENET), n)]
    return (list(_IMAGENET) + extra)[:n]


def _camel_to_underscored(action):
    return "_".join(re.findall("[A-Z][^A-Z]*", action))


def expected_classnames(stem, n_classes=DEFAULT_N_CLASSES):
    """Class names the loader must produce for ``make_dataset(root, stem, n_classes)``, in label order."""
    if stem == "dtd":
        return _names(_DTD, n_classes, "texture{}")
    if stem == "caltech101":
        return [_CALTECH_RENAMED.get(f, f) for f in sorted(_names(_CALTECH, n_classes, "object{}"))]
    if stem == "oxford_pets":
        return [b.lower() for b in _names(_PETS, n_classes, "breed{}")]
    if stem == "stanford_cars":
        return [" ".join([n.split(" ")[-1]] + n.split(" ")[:-1]) for n in _names(_CARS, n_classes, "Make Model{} 2001")]
    if stem == "oxford_flowers":
        return _names(_FLOWERS, n_classes, "flower {}")
    if stem == "food101":
        return sorted(_names(_FOOD, n_classes, "dish{}"))
    if stem == "fgvc_aircraft":
        return _names(_AIRCRAFT, n_classes, "Variant-{}")
    if stem == "sun397":
        return [" ".join(c.split("/")[2:][::-1]) for c in _names(_SUN, n_classes, "/s/scene{}")]
    if stem == "eurosat":
        return [_EUROSAT_NAMES[c] for c in _eurosat_folders(n_classes)]
    if stem == "ucf101":
        return [_camel_to_underscored(a) for a in _names(_UCF, n_classes, "Action{}")]
    if stem in ("imagenet", "imagenet_sketch", "imagenetv2"):
        return [name for _, name in _imagenet_classes(n_classes)]
    if stem in ("imagenet_a", "imagenet_r"):
        return [name for _, name in _imagenet_subset(n_classes)]
    raise ValueError(f"unknown dataset stem {stem!r}; known: {list(STEMS)}")


def _eurosat_folders(n):
    if n > len(_EUROSAT):
        raise ValueError(f"EuroSAT has {len(_EUROSAT)} classes, asked for {n}")
    return _EUROSAT[:n]


def _imagenet_subset(n):
    """ImageNet-A/-R hold a subset of ImageNet's classes: every other class of 2n."""
    return _imagenet_classes(2 * n)[1::2]


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------

def class_image(label, index, size=32, seed=0):
    """A class-discriminative RGB image: per-class hue and stripe orientation/period, plus noise."""
    rng = np.random.default_rng([seed, label, index])
    hue = (label * 0.6180339887) % 1.0
    base = np.array(colorsys.hsv_to_rgb(hue, 0.8, 0.9)) * 255.0  # [3]
    yy, xx = np.mgrid[0:size, 0:size]
    period = 3 + label % 5
    coord = (xx, yy, xx + yy, xx - yy)[label % 4]
    stripes = ((coord // period) % 2).astype(np.float32)[..., None]  # [H, W, 1]
    img = base * (0.55 + 0.45 * stripes) + rng.normal(0.0, 12.0, (size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _save(path, label, index, size, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    class_image(label, index, size, seed).save(path, quality=95)


def _split_counts(per_class):
    if per_class < 3:
        raise ValueError(f"per_class must be >= 3 (one image each for train, val and test), got {per_class}")
    n_train, n_val = max(1, round(0.5 * per_class)), max(1, round(0.2 * per_class))
    if per_class - n_train - n_val < 1:
        n_train -= 1
    return n_train, n_val


def _split_of(index, per_class):
    n_train, n_val = _split_counts(per_class)
    return "train" if index < n_train else ("val" if index < n_train + n_val else "test")


def _write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def _write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _folder_dataset(image_dir, folders, classnames, per_class, size, seed, labels=None, ext=".jpg"):
    """``image_dir/<folder>/<folder>_<i>.jpg``; returns the split dict (paths relative to image_dir)."""
    split = {"train": [], "val": [], "test": []}
    for position, (folder, cname) in enumerate(zip(folders, classnames)):
        label = position if labels is None else labels[position]
        for i in range(per_class):
            rel = f"{folder}/{folder.replace('/', '_')}_{i + 1:04d}{ext}"
            _save(image_dir / rel, label, i, size, seed)
            split[_split_of(i, per_class)].append([rel, label, cname])
    return split


# ----------------------------------------------------------------------------------------------
# One builder per dataset
# ----------------------------------------------------------------------------------------------

def _make_dtd(d, n, per_class, size, seed):
    names = _names(_DTD, n, "texture{}")
    split = _folder_dataset(d / "images", names, names, per_class, size, seed)
    return {"split_zhou_DescribableTextures.json": split}


def _make_caltech101(d, n, per_class, size, seed):
    folders = sorted(_names(_CALTECH, n, "object{}"))
    names = [_CALTECH_RENAMED.get(f, f) for f in folders]
    split = _folder_dataset(d / "101_ObjectCategories", folders, names, per_class, size, seed)
    for i, folder in enumerate(_CALTECH_IGNORED):  # present on disk, never loaded
        _save(d / "101_ObjectCategories" / folder / "image_0001.jpg", 100 + i, 0, size, seed)
    return {"split_zhou_Caltech101.json": split}


def _make_eurosat(d, n, per_class, size, seed):
    folders = _eurosat_folders(n)
    split = _folder_dataset(d / "2750", folders, [_EUROSAT_NAMES[f] for f in folders], per_class, size, seed)
    return {"split_zhou_EuroSAT.json": split}


def _make_food101(d, n, per_class, size, seed):
    names = sorted(_names(_FOOD, n, "dish{}"))
    split = _folder_dataset(d / "images", names, names, per_class, size, seed)
    return {"split_zhou_Food101.json": split}


def _make_oxford_pets(d, n, per_class, size, seed):
    breeds = _names(_PETS, n, "breed{}")
    split, lines = {"train": [], "val": [], "test": []}, {"trainval": [], "test": []}
    for label, breed in enumerate(breeds):
        species = 1 if breed[0].isupper() else 2  # cats are capitalised in the real annotations
        for i in range(per_class):
            stem = f"{breed}_{i + 1}"
            _save(d / "images" / f"{stem}.jpg", label, i, size, seed)
            part = _split_of(i, per_class)
            split[part].append([f"{stem}.jpg", label, breed.lower()])
            lines["test" if part == "test" else "trainval"].append(f"{stem} {label + 1} {species} {label + 1}")
    _write_lines(d / "annotations" / "trainval.txt", lines["trainval"])
    _write_lines(d / "annotations" / "test.txt", lines["test"])
    return {"split_zhou_OxfordPets.json": split}


def _make_stanford_cars(d, n, per_class, size, seed):
    from scipy.io import savemat

    meta_names = _names(_CARS, n, "Make Model{} 2001")
    classnames = expected_classnames("stanford_cars", n)
    split = {"train": [], "val": [], "test": []}
    annos = {"cars_train": [], "cars_test": []}
    for label in range(n):
        for i in range(per_class):
            part = _split_of(i, per_class)
            folder = "cars_test" if part == "test" else "cars_train"
            fname = f"{len(annos[folder]) + 1:05d}.jpg"
            _save(d / folder / fname, label, i, size, seed)
            annos[folder].append((fname, label + 1))
            split[part].append([f"{folder}/{fname}", label, classnames[label]])

    def struct(rows):
        arr = np.zeros((1, len(rows)), dtype=[("fname", "O"), ("class", "O")])
        for j, (fname, cls) in enumerate(rows):
            arr[0, j] = (fname, np.array([[cls]], dtype=np.uint8))
        return arr

    (d / "devkit").mkdir(parents=True, exist_ok=True)
    savemat(d / "devkit" / "cars_train_annos.mat", {"annotations": struct(annos["cars_train"])})
    savemat(d / "cars_test_annos_withlabels.mat", {"annotations": struct(annos["cars_test"])})
    meta = np.empty((1, n), dtype=object)
    meta[0, :] = meta_names
    savemat(d / "devkit" / "cars_meta.mat", {"class_names": meta})
    return {"split_zhou_StanfordCars.json": split}


def _make_oxford_flowers(d, n, per_class, size, seed):
    from scipy.io import savemat

    names = _names(_FLOWERS, n, "flower {}")
    split, labels = {"train": [], "val": [], "test": []}, []
    for i in range(per_class):  # interleave classes, as the real image numbering does
        for label in range(n):
            labels.append(label + 1)
            fname = f"image_{len(labels):05d}.jpg"
            _save(d / "jpg" / fname, label, i, size, seed)
            split[_split_of(i, per_class)].append([fname, label, names[label]])
    savemat(d / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    _write_json(d / "cat_to_name.json", {str(label + 1): name for label, name in enumerate(names)})
    return {"split_zhou_OxfordFlowers.json": split}


def _make_fgvc_aircraft(d, n, per_class, size, seed):
    variants = _names(_AIRCRAFT, n, "Variant-{}")
    lines, image_id = {"train": [], "val": [], "test": []}, 1000000
    for label, variant in enumerate(variants):
        for i in range(per_class):
            image_id += 1
            _save(d / "images" / f"{image_id}.jpg", label, i, size, seed)
            lines[_split_of(i, per_class)].append(f"{image_id} {variant}")
    _write_lines(d / "variants.txt", variants)
    for part, rows in lines.items():
        _write_lines(d / f"images_variant_{part}.txt", rows)
    return {}


def _make_sun397(d, n, per_class, size, seed):
    classes = _names(_SUN, n, "/s/scene{}")
    names = expected_classnames("sun397", n)
    split, lines = {"train": [], "val": [], "test": []}, {"trainval": [], "test": []}
    for label, cls in enumerate(classes):
        for i in range(per_class):
            rel = f"{cls[1:]}/sun_{label:03d}{i:04d}.jpg"
            _save(d / "SUN397" / rel, label, i, size, seed)
            part = _split_of(i, per_class)
            split[part].append([rel, label, names[label]])
            lines["test" if part == "test" else "trainval"].append(f"/{rel}")
    _write_lines(d / "ClassName.txt", classes)
    _write_lines(d / "Training_01.txt", lines["trainval"])
    _write_lines(d / "Testing_01.txt", lines["test"])
    return {"split_zhou_SUN397.json": split}


def _make_ucf101(d, n, per_class, size, seed):
    actions = _names(_UCF, n, "Action{}")
    split, lines = {"train": [], "val": [], "test": []}, {"trainval": [], "test": []}
    for label, action in enumerate(actions):
        folder = _camel_to_underscored(action)
        for i in range(per_class):
            video = f"v_{action}_g{i + 1:02d}_c01"
            _save(d / "UCF-101-midframes" / folder / f"{video}.jpg", label, i, size, seed)
            part = _split_of(i, per_class)
            split[part].append([f"{folder}/{video}.jpg", label, folder])
            entry = f"{action}/{video}.avi"
            lines["test" if part == "test" else "trainval"].append(entry if part == "test" else f"{entry} {label + 1}")
    _write_lines(d / "ucfTrainTestlist" / "classInd.txt", [f"{i + 1} {a}" for i, a in enumerate(actions)])
    _write_lines(d / "ucfTrainTestlist" / "trainlist01.txt", lines["trainval"])
    _write_lines(d / "ucfTrainTestlist" / "testlist01.txt", lines["test"])
    return {"split_zhou_UCF101.json": split}


def _write_classnames(d, classes):
    _write_lines(d / "classnames.txt", [f"{wnid} {name}" for wnid, name in classes])


def _make_imagenet(d, n, per_class, size, seed):
    classes = _imagenet_classes(n)
    n_val = max(1, per_class // 3)
    for label, (wnid, _) in enumerate(classes):
        for i in range(per_class):
            if i < per_class - n_val:
                _save(d / "images" / "train" / wnid / f"{wnid}_{i + 1}.JPEG", label, i, size, seed)
            else:
                _save(d / "images" / "val" / wnid / f"ILSVRC2012_val_{label * 100 + i:08d}.JPEG", label, i, size, seed)
    _write_classnames(d, classes)
    return {}


def _make_imagenetv2(d, n, per_class, size, seed):
    classes = _imagenet_classes(n)
    for label in range(n):
        for i in range(per_class):
            _save(d / "imagenetv2-matched-frequency-format-val" / str(label) / f"{label:04d}{i:04d}.jpeg",
                  label, i, size, seed)
    _write_classnames(d, classes)
    return {}


def _make_imagenet_sketch(d, n, per_class, size, seed):
    classes = _imagenet_classes(n)
    for label, (wnid, _) in enumerate(classes):
        for i in range(per_class):
            _save(d / "images" / wnid / f"sketch_{i + 1}.JPEG", label, i, size, seed)
    _write_classnames(d, classes)
    return {}


def _make_imagenet_subset(image_subdir):
    def build(d, n, per_class, size, seed):
        for label, (wnid, _) in enumerate(_imagenet_subset(n)):
            for i in range(per_class):
                _save(d / image_subdir / wnid / f"{label:03d}_{i:04d}.jpg", label, i, size, seed)
        (d / image_subdir / "README.txt").write_text("synthetic test copy\n")
        _write_classnames(d, _imagenet_classes(2 * n))  # the full ImageNet list, as upstream ships it
        return {}
    return build


_BUILDERS = {
    "dtd": _make_dtd, "caltech101": _make_caltech101, "eurosat": _make_eurosat, "food101": _make_food101,
    "oxford_pets": _make_oxford_pets, "stanford_cars": _make_stanford_cars, "oxford_flowers": _make_oxford_flowers,
    "fgvc_aircraft": _make_fgvc_aircraft, "sun397": _make_sun397, "ucf101": _make_ucf101,
    "imagenet": _make_imagenet, "imagenetv2": _make_imagenetv2, "imagenet_sketch": _make_imagenet_sketch,
    "imagenet_a": _make_imagenet_subset("imagenet-a"), "imagenet_r": _make_imagenet_subset("imagenet-r"),
}


def make_dataset(root, stem, n_classes=DEFAULT_N_CLASSES, per_class=6, image_size=32, seed=0, write_split=True):
    """Build ``root/<dataset dir>`` for ``stem`` (a config stem such as ``"dtd"``); returns that folder.

    ``write_split=False`` leaves out the ``split_zhou_*.json`` file (to test its absence or
    regeneration); the raw annotation files are always written.
    """
    if stem not in _BUILDERS:
        raise ValueError(f"unknown dataset stem {stem!r}; known: {list(STEMS)}")
    _split_counts(per_class)
    dataset_dir = Path(root) / DATASET_DIRS[stem]
    split_files = _BUILDERS[stem](dataset_dir, n_classes, per_class, image_size, seed)
    if write_split:
        for name, split in split_files.items():
            _write_json(dataset_dir / name, split)
    return dataset_dir


def split_sizes(stem, n_classes=DEFAULT_N_CLASSES, per_class=6):
    """``{"train", "val", "test"}`` image counts the full (non-few-shot) loader must return."""
    n_train, n_val = _split_counts(per_class)
    if stem == "imagenet":
        n_test = max(1, per_class // 3)
        return {"train": n_classes * (per_class - n_test), "val": n_classes * n_test, "test": n_classes * n_test}
    if stem in ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"):
        return {"train": n_classes * per_class, "val": 0, "test": n_classes * per_class}
    return {"train": n_classes * n_train, "val": n_classes * n_val, "test": n_classes * (per_class - n_train - n_val)}


def dataset_cfg(root, stem, num_shots=-1, subsample="all", seed=1, **overrides):
    """A default config for ``stem`` under ``root``: tiny images, no workers, quiet.

    ``overrides`` are ``KEY=value`` pairs with dots written as double underscores
    (``DATASET__IMBALANCE_RATIO=10``).
    """
    from dpl.config import get_cfg_default

    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = DATASET_NAMES[stem]
    cfg.DATASET.NUM_SHOTS = num_shots
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.SEED = seed
    cfg.INPUT.SIZE = (32, 32)
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = 4
    cfg.DATALOADER.TEST.BATCH_SIZE = 8
    cfg.USE_CUDA = False
    cfg.VERBOSE = False
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split("__")
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, value)
    return cfg
