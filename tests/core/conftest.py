"""Shared fixtures of the ofa_core tests."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Every core test runs single-threaded (deterministic and fair to a background run), then restores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
