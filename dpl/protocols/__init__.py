"""Protocol steps: what ``scripts/<method>/*.sh`` and ``scripts/run_protocol.py`` run.

``python -m dpl.protocols METHOD_DIR SCRIPT STEP [ARGS...]`` runs one step as the scripts do;
``dpl.protocols.steps`` defines the steps, ``dpl.protocols.runner`` plans and runs them. Importing
this package imports nothing heavy, so a script on the wrong interpreter fails with one line.
"""
