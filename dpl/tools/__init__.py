"""Command-line tools (``python -m dpl.tools.<name>``): ``check_data`` checks a CoOp ``DATA`` folder."""
