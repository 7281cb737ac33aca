"""probml: reference Pyro implementations of ten recent probabilistic-ML methods.

Each method is a generative model (``probml.models``), a guide where it has one
(``probml.guides``) and an inference routine (``probml.inference``). The method entry points are
re-exported here as they land.
"""

__version__ = "0.1.0"

from probml.inference.importance import importance_sample  # noqa: E402
from probml.inference.metalearners import (  # noqa: E402
    BayesianQLearner,
    DRRatioLearner,
    QDRLearner,
    QLearner,
    SRatioLearner,
    TRatioLearner,
)
from probml.inference.minimax import DRUM  # noqa: E402
from probml.inference.smc import SURGE  # noqa: E402

__all__ = [
    "__version__",
    "importance_sample",
    "QLearner",
    "SRatioLearner",
    "TRatioLearner",
    "DRRatioLearner",
    "QDRLearner",
    "BayesianQLearner",
    "SURGE",
    "DRUM",
]
