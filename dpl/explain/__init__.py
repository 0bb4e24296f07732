"""Pictures of what importance-weighted token dropout computes (``python -m dpl.tools.explain``).

- ``maps``: ``ImportanceRecorder``, a layer hook that records the importance terms, the combined importance and
  the drop probability with the training step's own functions, and ``TokenMaps``;
- ``model_maps``: ``explain(model, images, classnames)``, the maps of a model's images and class prompts (the
  frozen CLIP's attention for a model without token dropout);
- ``figures``: the matplotlib figures of an ``Explanation``.
"""
from .maps import TERM_TITLES, ImportanceRecorder, TokenMaps, layer_token_maps, mean_over_layers
from .model_maps import Explanation, explain, token_dropout_setup

__all__ = ["TERM_TITLES", "ImportanceRecorder", "TokenMaps", "layer_token_maps", "mean_over_layers", "Explanation",
           "explain", "token_dropout_setup"]
