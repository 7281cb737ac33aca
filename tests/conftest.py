import os

import pytest
import torch
from hypothesis import settings

# Property tests draw fresh examples on every local run (they found a rounding bug that way);
# CI loads the "ci" profile (.ci/run), whose examples are fixed, so a landing never hangs on
# a rare draw. A failure seen locally is replayed from .hypothesis/ until it is fixed.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

os.environ.setdefault("PROBML_QUIET", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

# Under pytest-xdist every worker is one process: one intra-op thread each keeps `-n 2` on a
# 2-core machine from oversubscribing the cores (which slows small torch ops many-fold).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
