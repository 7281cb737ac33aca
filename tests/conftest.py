import os

import pytest
import torch

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
