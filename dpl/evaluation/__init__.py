from .build import EVALUATOR_REGISTRY, build_evaluator
from .evaluator import Classification, EvaluatorBase, macro_f1_score

__all__ = ["EVALUATOR_REGISTRY", "build_evaluator", "Classification", "EvaluatorBase", "macro_f1_score"]
