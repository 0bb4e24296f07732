"""Performance benchmark of the trainers (``python -m dpl.bench``; see ``dpl.bench.cli``)."""
from dpl.bench.measure import Task, measure, measure_isolated
from dpl.bench.models import ARCHITECTURES, TRAINER_CONFIGS, build_bench_trainer

__all__ = ["ARCHITECTURES", "TRAINER_CONFIGS", "Task", "build_bench_trainer", "measure", "measure_isolated"]
