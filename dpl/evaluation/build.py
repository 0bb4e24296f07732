from dpl.utils.registry import Registry, check_availability

EVALUATOR_REGISTRY = Registry("EVALUATOR")


def build_evaluator(cfg, **kwargs):
    """The evaluator named by ``cfg.TEST.EVALUATOR`` (``Classification``)."""
    name = cfg.TEST.EVALUATOR
    check_availability(name, EVALUATOR_REGISTRY.registered_names(), "evaluator (TEST.EVALUATOR)")
    if cfg.VERBOSE:
        print(f"Loading evaluator: {name}")
    return EVALUATOR_REGISTRY.get(name)(cfg, **kwargs)
