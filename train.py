"""CoOp-compatible entry point: ``python train.py --root DATA --trainer T --config-file ... [KEY VALUE ...]``.

Same flags, config merge order and main flow as CoOp's ``train.py``; the implementation is
``dpl.tools.train`` (exit codes and what a rerun into a used ``--output-dir`` does are described there).
"""
import sys

from dpl.tools.train import (  # noqa: F401  (re-exported for code that imports train.py's names)
    EXIT_CONFIG_ERROR,
    EXIT_INTERRUPTED_SIGINT,
    EXIT_INTERRUPTED_SIGTERM,
    EXIT_RUN_ERROR,
    build_parser,
    cli,
    main,
    reset_cfg,
    setup_cfg,
)

if __name__ == "__main__":
    sys.exit(cli())
