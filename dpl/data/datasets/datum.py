"""``Datum``: one labelled image (Dassl's ``dassl.data.datasets.base_dataset.Datum``).

Unlike Dassl's, it does not stat its image at construction (slow on network storage, and a bare
``AssertionError`` when missing); datasets check their files once, cheaply
(:func:`dpl.data.datasets.splits.check_image_files`). It compares by value.
"""


class Datum:
    """One labelled image: ``impath`` (str), ``label`` (int), ``domain`` (int), ``classname`` (str)."""

    __slots__ = ("_impath", "_label", "_domain", "_classname")

    def __init__(self, impath="", label=0, domain=0, classname=""):
        if not isinstance(impath, str):
            raise TypeError(f"Datum.impath must be a str, got {type(impath).__name__}: {impath!r}")
        self._impath = impath
        self._label = int(label)
        self._domain = int(domain)
        self._classname = classname

    @property
    def impath(self):
        return self._impath

    @property
    def label(self):
        return self._label

    @property
    def domain(self):
        return self._domain

    @property
    def classname(self):
        return self._classname

    def _key(self):
        return (self._impath, self._label, self._domain, self._classname)

    def __eq__(self, other):
        return isinstance(other, Datum) and self._key() == other._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return f"Datum(impath={self._impath!r}, label={self._label}, domain={self._domain}, classname={self._classname!r})"

    def __getstate__(self):
        return {"_impath": self._impath, "_label": self._label, "_domain": self._domain, "_classname": self._classname}

    def __setstate__(self, state):
        if isinstance(state, tuple):  # earlier versions pickled a tuple (upstream-style loaders running here did)
            state = dict(zip(("_impath", "_label", "_domain", "_classname"), state))
        self._impath, self._label = state["_impath"], state["_label"]
        self._domain, self._classname = state.get("_domain", 0), state.get("_classname", "")


DASSL_DATUM_MODULE = "dassl.data.datasets.base_dataset"


class DasslDatum(Datum):
    """``Datum`` under Dassl's class path (``dassl.data.datasets.base_dataset.Datum``), for Dassl-style code.

    Pickling it needs that module name to resolve to this class, which ``dpl.plugins``' alias of ``dassl``
    does; Dassl unpickles it as its own ``Datum`` (the state is the plain dict Dassl's object holds).
    """

    __slots__ = ()


DasslDatum.__module__ = DASSL_DATUM_MODULE
DasslDatum.__name__ = DasslDatum.__qualname__ = "Datum"
