"""Run results: everything ``parse_results.py``, the protocol scripts and the engine read or write about them.

=================== ===============================================================================
``schema``          the ``results.json`` writer and reader (``LONG_TAIL_GROUPS``: the long-tail groups)
``identity``        what defines an experiment: the run identity and its short id
``layout``          where each protocol's runs live under the output root
``logs``            a result from ``log.txt`` (Dassl's two log generations, restarted runs)
``runs``            one run folder: its result (``parse_run``) and whether it is finished (``read_state``)
``discovery``       a protocol's runs under its root, by trainer, config, dataset and seed
``stats``           mean ± std (or the 95% interval) over seeds, the harmonic mean
``upstream``        seed summaries of one directory, as CoOp's ``parse_test_res.py`` prints them
``tables``          protocol tables: seed statistics per method and dataset, per protocol
``render``          a table as text, Markdown, CSV or JSON
``plots``           optional PNG charts of a table (matplotlib)
``curves``          training curves of a run from its logs (losses, lambda, lr, acc, evaluations)
``curve_figures``   those curves as figures, one run or the seeds of a config overlaid
``errors``          ``ResultsError``: a problem the user must fix, printed as one line
=================== ===============================================================================

Importing this package does not import torch: ``parse_results.py`` reads results with it alone (torch
is imported only to read a checkpoint, for ``parse_results.py --run-status`` on an unfinished run).
"""
