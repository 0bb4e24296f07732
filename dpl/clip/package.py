"""The one place that imports OpenAI's ``clip`` package.

``openai-clip`` does ``from pkg_resources import packaging`` at import time, and setuptools (< 81)
answers with a deprecation ``UserWarning`` that says nothing useful to our users. Every module of
``dpl`` that needs the package gets it from here, so the warning is silenced in exactly one place
and only for that import.
"""
import importlib
import warnings


def import_clip():
    """Return the ``clip`` package (with ``clip.model`` loaded), silencing only the pkg_resources warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated", category=UserWarning)
        try:
            clip = importlib.import_module("clip")
        except ImportError as exc:  # e.g. setuptools >= 81 has no pkg_resources
            raise ImportError(
                f"cannot import OpenAI's `clip` package ({exc}); install it with "
                "`pip install openai-clip 'setuptools>=77.0.3,<81'`"
            ) from exc
    importlib.import_module("clip.model")
    importlib.import_module("clip.clip")
    return clip


clip = import_clip()
# ``from .clip import *`` in the package's __init__ exports only load/tokenize/available_models;
# the URL table and the tokenizer live in the ``clip.clip`` submodule.
MODEL_URLS = clip.clip._MODELS  # backbone name -> https://.../<sha256>/<file name>
TOKENIZER = clip.clip._tokenizer
