"""``python -m dpl.protocols METHOD_DIR SCRIPT STEP [ARGS...]``: one protocol step, as
``scripts/<method>/<step>.sh`` runs it (``SCRIPT``, e.g. ``dpl/base2new_train.sh``, names it in messages).

Environment: ``DATA`` (required unless ``DPL_PLAN=1``), ``OUTPUT`` (default ``<repo>/output``),
``CFG`` (a config name of the method's trainer, or a YAML file), ``TAG`` (the ``@`` name of the run's
config folder), ``LOADEP`` (the epoch an evaluation loads; default the last), ``SOURCE``
(cross-dataset training set, default imagenet), ``DPL_PLAN=1`` (print ``<kind> <run folder>`` per run
and exit).
"""
import sys


def _main():
    script = sys.argv[2] if len(sys.argv) > 2 else "dpl.protocols"
    try:
        from .cli import main
    except ModuleNotFoundError as exc:  # a Python without the project's requirements
        print(f"{script}: {sys.executable} cannot import {exc.name}: run `make test` once in the checkout (it "
              "creates .venv, which the scripts use) or set PYTHON to an interpreter where `pip install -e .` "
              "was run", file=sys.stderr)
        return 1
    return main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(_main())
