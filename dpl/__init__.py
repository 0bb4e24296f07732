"""dpl: a Dassl-compatible engine for CLIP prompt learning, home of Dropout Prompt Learning."""
__version__ = "0.1.0"
