"""Typed settings of a trainer's config node: read and validated once, then plain values for the library.

A settings class is a frozen dataclass whose field names are the node's keys in lower case
(``n_ctx_text`` <-> ``N_CTX_TEXT``), with a ``from_node(node)`` classmethod; it validates in
``__post_init__`` and raises ``SettingError(field, reason)``. ``setting_errors`` turns those (also
from library objects built from the settings) into one-line ``UserError``s naming the config key.
"""
import contextlib

from dpl.utils.errors import SettingError, UserError, require  # noqa: F401 (re-exported for settings classes)


@contextlib.contextmanager
def setting_errors(node_name, node):
    """Inside: a ``SettingError`` becomes ``UserError("<node_name>.<KEY> is <value>: <reason>")``.

    ``node_name`` is the node's full name (e.g. ``TRAINER.DPL``), ``node`` the config node holding the value.
    """
    try:
        yield
    except SettingError as exc:
        key = exc.field.upper()
        value = f" is {node[key]!r}" if key in node else ""
        raise UserError(f"{node_name}.{key}{value}: {exc.reason}") from None
