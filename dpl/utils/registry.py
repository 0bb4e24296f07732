"""Name -> class registries (Dassl-compatible: keys are class names).

Registering a name twice raises, as in Dassl, with two exceptions that let a user's own code stand
next to the project's: a class from outside the project (a plugin, or the modules an upstream
``train.py`` imports itself) takes a name that one of the project's files registered, whichever was
imported first; and a class from a plugin replaces one from an earlier plugin. Each such decision is
kept in ``overrides`` for the run's log.
"""
import difflib
import inspect

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
        self.overrides = {}  # name -> (the object used, the object it displaced)
        self.displaced = []  # every object that lost its name (its config node still exists: dpl.engine.build)

    def _do_register(self, name, obj, force=False):
        existing = self._obj_map.get(name)
        if existing is None or force or existing is obj:
            self._obj_map[name] = obj
            return
        if is_project_object(obj) and not is_project_object(existing):
            self.overrides[name] = (existing, obj)  # the user's class was imported first: it stays
            self.displaced.append(obj)
            return
        if not is_project_object(obj) and (is_project_object(existing) or is_plugin_object(existing)):
            self.overrides[name] = (obj, existing)
            self.displaced.append(existing)
            self._obj_map[name] = obj
            return
        raise KeyError(f'An object named "{name}" was already registered in "{self._name}" registry')

    def override_notes(self, names):
        """One line per name of ``names`` whose class is not the project's (or an earlier plugin's), for the log."""
        return [f"{self._name.capitalize()} {name}: using {describe_origin(used)}, which replaces "
                f"{describe_origin(displaced)}" for name, (used, displaced) in self.overrides.items() if name in names]

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


# Modules whose classes are the project's own: the library and the project's datasets/ and trainers/ folders
# (imported under these private package names by ``dpl.project``).
PROJECT_MODULE_PREFIXES = ("dpl.", "dpl_datasets.", "dpl_trainers.")
PLUGIN_MODULE_PREFIX = "dpl_plugin_"  # modules loaded by ``dpl.plugins``


def is_project_object(obj):
    return getattr(obj, "__module__", "").startswith(PROJECT_MODULE_PREFIXES)


def is_plugin_object(obj):
    return getattr(obj, "__module__", "").startswith(PLUGIN_MODULE_PREFIX)


def describe_origin(obj):
    """``the project's <file>``, ``<file>`` or the module name when there is no file."""
    try:
        where = inspect.getfile(obj)
    except (TypeError, OSError):
        where = getattr(obj, "__module__", "?")
    return f"the project's {where}" if is_project_object(obj) else where


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
