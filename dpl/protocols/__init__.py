"""Protocol steps: what ``scripts/<method>/*.sh`` and ``scripts/run_protocol.py`` run.

``python -m dpl.protocols METHOD_DIR SCRIPT STEP [ARGS...]`` runs one step as the scripts do;
``dpl.protocols.steps`` defines the steps, ``dpl.protocols.runner`` plans and runs them,
``dpl.protocols.methods`` finds the methods (every ``scripts/<method>/`` with a ``method.sh``) and
``dpl.protocols.sweep`` queues a whole protocol's script jobs (``scripts/run_protocol.py``). Importing
this package imports nothing heavy, so a script on the wrong interpreter fails with one line.
"""
