"""Run results: the ``results.json`` schema, run identity, the output layout, log parsing and the
state of a run folder (finished / resumable / another experiment).

Importing this package does not import torch: ``parse_results.py`` reads results with it alone.
"""
