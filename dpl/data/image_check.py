"""Find images that cannot be decoded before a run depends on them.

A damaged file otherwise surfaces only when a ``DataLoader`` worker reads it, which for a test image
is after the whole training run. Each image is opened and converted to RGB exactly as
:func:`dpl.data.data_manager.read_image` does, so a truncated JPEG (whose header is fine and which
``Image.verify()`` accepts) is caught too.

- :func:`find_unreadable_images` decodes paths in a thread pool and returns ``(path, reason)`` pairs.
- :func:`unreadable_images_message` turns such pairs into one user-facing line.
- :func:`check_training_images` is what the trainer calls before the first epoch.
"""
import os
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from dpl.utils.errors import UnreadableFileError

# More threads than this mostly add contention: decoding is CPU-bound once the file is read.
MAX_DEFAULT_WORKERS = 16
# Below this many images the check takes well under a second and a progress bar is only noise.
PROGRESS_MIN_IMAGES = 1000
EXAMPLES_IN_MESSAGE = 2


def default_num_workers():
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))


def unreadable_reason(path):
    """``None`` when ``path`` decodes as an RGB image, else a one-line reason."""
    try:
        with Image.open(path) as img:
            img.convert("RGB")
    except FileNotFoundError:
        return "file not found"
    except UnidentifiedImageError:
        return "not an image"
    except OSError as err:
        # strerror ("Permission denied") for OS errors; PIL's own ("image file is truncated") have only a message
        return _one_line(err.strerror or str(err) or type(err).__name__)
    except Exception as err:  # noqa: BLE001  PIL plugins raise ValueError, SyntaxError, ... on malformed data
        return _one_line(f"{type(err).__name__}: {err}")
    return None


def _one_line(text):
    return " ".join(str(text).split())


def find_unreadable_images(paths, num_workers=None, progress=False, desc="Reading images"):
    """``[(path, reason)]`` for the ``paths`` that cannot be decoded, in input order.

    Runs in threads: PIL releases the GIL while it decodes, so they scale with the cores. A missing
    file counts as unreadable ("file not found"). ``progress`` shows a tqdm bar on stderr when that is a
    terminal (never in a run's log, whose stream is not one).
    """
    paths = list(paths)
    workers = max(1, min(num_workers or default_num_workers(), len(paths) or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = pool.map(unreadable_reason, paths)
        # disable=None: tqdm draws only on a terminal
        reasons = tqdm(reasons, total=len(paths), desc=desc, unit="img", leave=False,
                       disable=None if progress else True)
        return [(path, reason) for path, reason in zip(paths, reasons) if reason is not None]


def unreadable_images_message(unreadable, total, what, advice):
    """One line: ``N of M <what> images cannot be read, e.g. <path> (<reason>), ...; <advice>``."""
    examples = ", ".join(f"{path} ({reason})" for path, reason in unreadable[:EXAMPLES_IN_MESSAGE])
    return f"{len(unreadable)} of {total} {what} images cannot be read, e.g. {examples}; {advice}"


def verify_images_advice(data_root, dataset):
    """What to do about unreadable images of ``dataset`` (a config stem or class name) under ``data_root``."""
    root = os.path.abspath(os.path.expanduser(data_root))
    return (f"run `python -m dpl.tools.check_data --root {root} --verify-images {dataset}` to list them all "
            "and replace them from the original dataset archive")


def check_training_images(items, dataset_name, data_root, stem=None, num_workers=None):
    """Raise ``UnreadableFileError`` (one line) if an image of ``items`` (``Datum``s) cannot be decoded.

    Prints one line when all are readable, so a log shows the check ran. Paths are checked once each.
    """
    paths = list(dict.fromkeys(item.impath for item in items))
    unreadable = find_unreadable_images(paths, num_workers=num_workers, progress=len(paths) >= PROGRESS_MIN_IMAGES,
                                        desc=f"Checking {dataset_name} images")
    if unreadable:
        advice = verify_images_advice(data_root, stem or dataset_name)
        raise UnreadableFileError(unreadable_images_message(unreadable, len(paths), dataset_name, advice))
    print(f"Checked {len(paths):,} {dataset_name} images: all readable")
