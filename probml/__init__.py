"""probml: reference Pyro implementations of ten recent probabilistic-ML methods.

Each method is a generative model (``probml.models``), a guide where it has one
(``probml.guides``) and an inference routine (``probml.inference``). The main entry point of
every method is re-exported here (``from probml import PACEGGM``); the modules named in
``_EXPORTS`` hold the rest. The re-exports are imported on first use, so ``import probml``
stays light and a submodule import does not load every method.
"""

from importlib import import_module as _import_module

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    # importance sampling with your own Pyro model and guide
    "importance_sample": "probml.inference.importance",
    # constrained Bayesian experimental design
    "ScenarioTreePlanner": "probml.inference.planning",
    "run_experiment": "probml.inference.planning",
    # SURGE
    "SURGE": "probml.inference.smc",
    # DRUM
    "DRUM": "probml.inference.minimax",
    # PACE-GGM
    "PACEGGM": "probml.inference.pace",
    # relaxed fair regression
    "FairRegressor": "probml.inference.transport",
    # ratio treatment effects
    "QLearner": "probml.inference.metalearners",
    "SRatioLearner": "probml.inference.metalearners",
    "TRatioLearner": "probml.inference.metalearners",
    "DRRatioLearner": "probml.inference.metalearners",
    "QDRLearner": "probml.inference.metalearners",
    "BayesianQLearner": "probml.inference.metalearners",
    # the LLM methods: TinyLM (MoA FFNs and scale vectors are its config options), GRASP, BASIS
    "TinyLM": "probml.models.lm",
    "TinyLMConfig": "probml.models.lm",
    "GRASP": "probml.inference.projection",
    "identify_spurious_directions": "probml.inference.projection",
    "basis_advantages": "probml.inference.advantage",
    # raised by every estimator used before fit (scikit-learn's, and a RuntimeError)
    "NotFittedError": "probml.exceptions",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'probml' has no attribute {name!r}")
    value = getattr(_import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({n for n in globals() if not n.startswith("_")} | set(__all__))
