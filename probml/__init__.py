"""probml: reference Pyro implementations of ten recent probabilistic-ML methods.

Each method is a generative model (``probml.models``), a guide where it has one
(``probml.guides``) and an inference routine (``probml.inference``). The method entry points are
re-exported here as they land.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
