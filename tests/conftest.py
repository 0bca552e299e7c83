import os

import numpy as np
import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def tiny_flow_params():
    """A flow small enough for check_estimator and contract tests (seconds to train)."""
    return {"hidden": 8, "n_layers": 2}
