"""``TRAINER_REGISTRY``, ``build_trainer`` and the per-trainer config nodes (``extend_cfg``, checks)."""
from dpl.config.upstream import UPSTREAM_TRAINER_KEYS, add_upstream_nodes
from dpl.project import broken_leaves_note, import_project_modules
from dpl.utils.registry import Registry, check_availability

from .errors import UserError

TRAINER_REGISTRY = Registry("TRAINER")
_MISSING = object()  # a key a config node does not have


def build_trainer(cfg):
    """The trainer class named by ``cfg.TRAINER.NAME`` (registry key = class name), constructed with ``cfg``.

    A look-up, as Dassl's: the project's ``trainers/`` folder is imported only when the name is not
    registered yet (a caller that imported its own trainers keeps them; see ``dpl.utils.registry``).
    """
    name = cfg.TRAINER.NAME
    if name not in TRAINER_REGISTRY:
        import_project_modules()
    check_availability(name, TRAINER_REGISTRY.registered_names(), "trainer (--trainer / TRAINER.NAME)",
                       broken_leaves_note())
    if cfg.VERBOSE:
        print(f"Loading trainer: {name}")
    return TRAINER_REGISTRY.get(name)(cfg)


def extend_cfg_for_all_trainers(cfg):
    """Add every trainer's config node to ``cfg`` (before any YAML is merged).

    Calls the ``extend_cfg(cfg)`` classmethod of each registered trainer class that defines one itself (an
    inherited ``extend_cfg`` is called once, for the class that defines it), in registration order, then of
    the classes a plugin replaced (upstream files still set their nodes), then adds the keys only upstream
    ``train.py`` files define (``dpl.config.upstream``). ``cfg`` must not be frozen.
    """
    import_project_modules()
    called = set()
    trainers = [TRAINER_REGISTRY.get(name) for name in TRAINER_REGISTRY.registered_names()]
    for trainer in trainers + TRAINER_REGISTRY.displaced:
        for klass in getattr(trainer, "__mro__", ()):
            if "extend_cfg" in klass.__dict__ and klass not in called:
                called.add(klass)
                klass.extend_cfg(cfg)
    return add_upstream_nodes(cfg)


def check_trainer_nodes(cfg):
    """Refuse settings that the selected trainer would ignore; return the notes to log instead.

    The rule: the trainer named by ``cfg.TRAINER.NAME`` reads the ``cfg.TRAINER`` nodes its
    ``config_nodes()`` lists. Every key of every other trainer node is compared with the defaults tree
    (``get_cfg_default()`` plus all trainers' ``extend_cfg``); a value that differs would be silently
    ignored, so all such values are one ``UserError`` (one line, raised before anything is written).
    The same holds for a key of one of its own nodes that only upstream ``train.py`` files define (e.g.
    KgCoOp's ``TRAINER.COOP.W`` for CoOp; ``_unread_upstream_settings``).
    Not checked: an unknown trainer name (``build_trainer`` reports it) and a trainer whose
    ``config_nodes()`` is None (undeclared, e.g. Dassl-style trainers and plugins). The one exception is a
    ``TRAINING_FREE`` trainer (zero-shot CLIP, which upstream runs with CoOp's YAML files): no setting
    of a learning method can change its run, so the differing values become one note line, returned
    in a list (empty when there is nothing to note) for the caller to print into the run's log.
    """
    import_project_modules()
    name = cfg.TRAINER.NAME
    if name not in TRAINER_REGISTRY.registered_names():
        return []
    trainer = TRAINER_REGISTRY.get(name)
    own_nodes = trainer.config_nodes()
    if own_nodes is None:
        return []
    adopted = adopted_upstream_settings(cfg, trainer)
    notes = [_adopted_note(name, cfg, adopted)] if adopted else []
    ignored = [s for s in _foreign_settings(cfg, own_nodes) if f"TRAINER.{s[0]}.{s[1]}" not in adopted]
    unread = _unread_upstream_settings(cfg, trainer, own_nodes)
    if not ignored and not unread:
        return notes
    if trainer.TRAINING_FREE:
        return notes + [_training_free_note(name, ignored + unread)]
    if ignored:
        raise UserError(_foreign_settings_message(cfg, name, own_nodes, ignored))
    settings = ", ".join(_setting(node_name, key, value) for node_name, key, value in unread)
    raise UserError(f"{name} does not read {settings}: the key is there for upstream repositories' trainers "
                    "(dpl.config.upstream); remove it, or select the trainer that reads it")


def _merged_keys(cfg):
    """What files and options set (``dpl.config.CfgNode.merged_keys``; nothing for a plain yacs node)."""
    return cfg.merged_keys() if hasattr(cfg, "merged_keys") else frozenset()


def adopted_upstream_settings(cfg, trainer):
    """``{upstream key: own key}`` of the trainer's ``UPSTREAM_ALIASES`` whose upstream key a config file or option
    set."""
    merged = _merged_keys(cfg)
    return {source: target for source, target in getattr(trainer, "UPSTREAM_ALIASES", {}).items() if source in merged}


def adopt_upstream_settings(cfg):
    """Copy values set under upstream names into the selected trainer's own keys (``cfg`` not frozen).

    E.g. upstream KgCoOp's configs and scripts set ``TRAINER.COOP.W``; our KgCoOp reads ``TRAINER.KGCOOP.W``.
    The value lands where the trainer reads it, so the run identity records it there, whichever name was
    used. The same setting given two different values under both names is a ``UserError``.
    """
    name = cfg.TRAINER.NAME
    if name not in TRAINER_REGISTRY:
        return
    merged = _merged_keys(cfg)
    for source, target in adopted_upstream_settings(cfg, TRAINER_REGISTRY.get(name)).items():
        value, own = _lookup(cfg, source), _lookup(cfg, target)
        if target in merged and own != value:
            raise UserError(f"{target} = {own!r} and {source} = {value!r} (upstream's name of the same setting) "
                            "disagree: set one of them")
        node_name, _, key = target.rpartition(".")
        _lookup(cfg, node_name)[key] = type(own)(value)


def _adopted_note(trainer_name, cfg, adopted):
    moved = ", ".join(f"{source} -> {target} = {_lookup(cfg, target)!r}" for source, target in adopted.items())
    return f"{trainer_name} reads upstream names as its own: {moved}"


def _trainer_keys(trainer, node_name):
    """The keys of ``TRAINER.<node_name>`` that ``trainer`` reads: those its own ``extend_cfg`` defines (None when
    it defines no such node: then all)."""
    from dpl.config import get_cfg_default

    own = get_cfg_default()
    if hasattr(trainer, "extend_cfg"):
        trainer.extend_cfg(own)
    return set(own.TRAINER[node_name]) if node_name in own.TRAINER else None


def _unread_upstream_settings(cfg, trainer, own_nodes):
    """``[(node, key, value)]``: keys set on the trainer's own nodes that only upstream files define (e.g.
    KgCoOp's ``TRAINER.COOP.W`` for CoOp), which the trainer would ignore."""
    unread = []
    for node_name in own_nodes:
        keys = _trainer_keys(trainer, node_name)
        if keys is None or node_name not in UPSTREAM_TRAINER_KEYS:
            continue
        for key, default in UPSTREAM_TRAINER_KEYS[node_name].items():
            if key not in keys and cfg.TRAINER[node_name][key] != default:
                unread.append((node_name, key, cfg.TRAINER[node_name][key]))
    return unread


def _lookup(node, dotted_key):
    for part in dotted_key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _foreign_settings(cfg, own_nodes):
    """``[(node name, key within the node, value)]`` set on other trainer nodes than ``own_nodes``.

    "Set" means: different from the defaults tree, compared as run identities compare (one definition).
    """
    from dpl.results.identity import default_config, flatten_config

    defaults = flatten_config(default_config().TRAINER)
    settings = []
    for key, value in flatten_config(cfg.TRAINER).items():
        node_name, _, within = key.partition(".")
        if within and node_name not in own_nodes and defaults.get(key, _MISSING) != value:
            settings.append((node_name, within, _lookup(cfg.TRAINER[node_name], within)))  # as held: a tuple stays one
    return settings


def _setting(node_name, key, value):
    return f"TRAINER.{node_name}.{key} = {value!r}"


def _foreign_settings_message(cfg, trainer_name, own_nodes, ignored):
    """One line: which nodes the trainer reads, and per ignored value where it belongs instead."""
    own = " and ".join(f"TRAINER.{node}" for node in own_nodes) or "no TRAINER node"
    foreign = " or ".join(dict.fromkeys(f"TRAINER.{node_name}" for node_name, _, _ in ignored))
    items = [
        f"{_setting(node_name, key, value)} would be ignored; {_where_instead(cfg, trainer_name, own_nodes, key)}"
        for node_name, key, value in ignored
    ]
    return f"{trainer_name} reads {own}, not {foreign}: " + "; ".join(items)


def _where_instead(cfg, trainer_name, own_nodes, key):
    for node in own_nodes:
        if _lookup(cfg.TRAINER.get(node, {}), key) is not _MISSING:
            return f"set TRAINER.{node}.{key} instead"
    return f"{trainer_name} has no such setting"


def _training_free_note(trainer_name, ignored):
    settings = ", ".join(_setting(node_name, key, value) for node_name, key, value in ignored)
    verb = "is" if len(ignored) == 1 else "are"
    return f"Note: {trainer_name} learns no prompts: {settings} from the config {verb} ignored"
