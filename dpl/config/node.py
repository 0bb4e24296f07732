"""``CfgNode``: yacs' config node, except that a float key also takes an integer.

yacs requires a merged value to have the type of the value it replaces, so ``RES_WEIGHT 0`` on the
command line or ``TEXT_LOSS_WEIGHT: 25`` in a YAML file fails for a float key. This node turns such
integers (not bools; also inside a list or tuple of floats) into floats before handing the merge to yacs;
it also translates the upstream values whose type differs between upstream repositories
(``dpl.config.upstream.translated_value``: KgCoOp's bool ``TRAINER.COOP.CTX_INIT``). Every other check
stays yacs' own (unknown keys, other type mismatches, a float for an int key).
"""
from yacs.config import CfgNode as YacsCfgNode

from .upstream import translated_value


def int_as_float(value, original):
    """``value`` as a float when ``original`` is a float and ``value`` an int (bools are not), else as is.

    Element-wise for a list or tuple of the same length (``INPUT.RRCROP_SCALE (0.5, 1)`` is ``(0.5, 1.0)``),
    so the same setting always has the same value, and the same run identity.
    """
    if type(original) is float and type(value) is int:
        return float(value)
    if isinstance(original, (list, tuple)) and isinstance(value, (list, tuple)) and len(value) == len(original):
        coerced = [int_as_float(v, o) for v, o in zip(value, original)]
        if any(c is not v for c, v in zip(coerced, value)):
            return type(value)(coerced)
    return value


MERGED_KEYS = "_merged_keys"  # instance attribute (kept by clone(), like yacs' own flags)


def leaf_keys(node, prefix=""):
    """The dotted names of ``node``'s leaves."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


class CfgNode(YacsCfgNode):
    """A yacs ``CfgNode`` whose merges accept an integer for a float key (it becomes that float).

    Nested dicts become this class too (yacs builds children with ``cls``), and ``clone()`` keeps it. The
    node remembers which keys YAML files and option lists merged into it (``merged_keys``), so a value that
    equals its default can still be told from one nobody set.
    """

    def merged_keys(self):
        """Dotted names of every key merged into this node by ``merge_from_file/other_cfg/list``."""
        return frozenset(self.__dict__.get(MERGED_KEYS, ()))

    def _record_merged(self, keys):
        self.__dict__.setdefault(MERGED_KEYS, set()).update(keys)

    def merge_from_other_cfg(self, cfg_other):
        if isinstance(cfg_other, YacsCfgNode):
            cfg_other = cfg_other.clone()
            self._coerce_tree(cfg_other, self)
        super().merge_from_other_cfg(cfg_other)
        self._record_merged(leaf_keys(cfg_other))

    def merge_from_list(self, cfg_list):
        self._merge_from_list(cfg_list)
        self._record_merged(str(key) for key in list(cfg_list)[0::2])

    def _merge_from_list(self, cfg_list):
        cfg_list = list(cfg_list)
        for index in range(0, len(cfg_list) - 1, 2):
            original = self._existing_value(cfg_list[index])
            if original is not None:
                cfg_list[index + 1] = self._coerced(cfg_list[index + 1], original, str(cfg_list[index]))
        super().merge_from_list(cfg_list)

    @classmethod
    def _coerced(cls, raw, original, full_key):
        """``raw`` (as merged: a string is decoded by yacs) as a float where ``original`` is one, or as
        ``translated_value`` gives it for ``full_key``.

        An unchanged value is returned raw, so yacs decodes it exactly once.
        """
        value = cls._decode_cfg_value(raw)
        coerced = int_as_float(translated_value(full_key, value), original)
        return coerced if coerced is not value else raw

    @classmethod
    def _coerce_tree(cls, incoming, target, prefix=""):
        """Coerce the leaves of ``incoming`` in place against the matching leaves of ``target`` (whose
        dotted name in the root config is ``prefix``).

        Keys missing from ``target`` are left alone: yacs reports them.
        """
        for key, raw in incoming.items():
            if key not in target:
                continue
            original = target[key]
            if isinstance(raw, dict) and isinstance(original, YacsCfgNode):
                # yacs requires a merged node to have the class of the node it merges into
                node = raw if type(raw) is type(original) else type(original)(raw)
                cls._coerce_tree(node, original, f"{prefix}{key}.")
                incoming[key] = node
            else:
                incoming[key] = cls._coerced(raw, original, f"{prefix}{key}")

    @classmethod
    def _decode_cfg_value(cls, value):
        # yacs rebuilds a merged node with the parent's class; keeping the class _coerce_tree gave it
        # lets a trainer node built with yacs' own CfgNode (Dassl style) sit in this tree and merge.
        if isinstance(value, YacsCfgNode):
            return value
        return super()._decode_cfg_value(value)

    def _existing_value(self, full_key):
        """The current value at dotted ``full_key``, or None when there is none (yacs reports that)."""
        node = self
        for part in str(full_key).split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node
