"""The one error type of the result readers and tables."""


class ResultsError(Exception):
    """A problem the user must fix (a missing folder, nothing found, ``--strict`` with missing runs,
    matplotlib absent): ``parse_results.py`` prints it as one ``error:`` line and exits 1."""
