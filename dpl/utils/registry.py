"""Name -> class registries (Dassl-compatible: keys are class names)."""
import difflib

from .errors import UserError


class Registry:
    """A registry of classes keyed by their ``__name__``.

    >>> TRAINER_REGISTRY = Registry("TRAINER")
    >>> @TRAINER_REGISTRY.register()
    ... class CoOp: ...
    """

    def __init__(self, name):
        self._name = name
        self._obj_map = {}

    def _do_register(self, name, obj, force=False):
        if name in self._obj_map and not force:
            raise KeyError(f'An object named "{name}" was already registered in "{self._name}" registry')
        self._obj_map[name] = obj

    def register(self, obj=None, force=False):
        if obj is None:
            def wrapper(fn_or_class):
                self._do_register(fn_or_class.__name__, fn_or_class, force=force)
                return fn_or_class
            return wrapper
        self._do_register(obj.__name__, obj, force=force)
        return obj

    def get(self, name):
        if name not in self._obj_map:
            raise KeyError(f'Object name "{name}" does not exist in "{self._name}" registry; {self._hint(name)}')
        return self._obj_map[name]

    def registered_names(self):
        return list(self._obj_map.keys())

    def __contains__(self, name):
        return name in self._obj_map

    def _hint(self, name):
        close = difflib.get_close_matches(name, self._obj_map.keys(), n=1, cutoff=0.0)
        known = ", ".join(sorted(self._obj_map))
        return (f"do you mean [{close[0]}]? " if close else "") + f"registered: {known}"


class UnknownNameError(UserError, ValueError):
    """A name (trainer, dataset, optimizer, ...) that is not registered: a user error, not a bug."""


def check_availability(requested, available, what, note=""):
    """Raise UnknownNameError naming the closest registered name (Dassl's "do you mean" message).

    ``note``: a sentence appended to the message (e.g. which files failed to register anything).
    """
    if requested in available:
        return
    close = difflib.get_close_matches(requested, available, n=1, cutoff=0.0)
    hint = f" (do you mean [{close[0]}]?)" if close else ""
    raise UnknownNameError(
        f'The requested {what} "{requested}" is not registered; available: {sorted(available)}{hint}{note}'
    )
