"""Command-line tools (``python -m dpl.tools.<name>``): ``check_data`` checks a CoOp ``DATA`` folder,
``feature_cache`` lists or clears the image feature cache."""
