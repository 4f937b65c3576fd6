import os

import pytest

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "ofa-reference")
NOTE10 = os.path.join(SHARED, "note10")
PRED = os.path.join(SHARED, "acc_predictor.pth")


@pytest.fixture(scope="session")
def note10():
    if not os.path.isdir(NOTE10):
        pytest.skip("../shared not available")
    from ofa_core.latency import LatencyTable
    return LatencyTable.from_note10_dir(NOTE10)


@pytest.fixture(scope="session")
def published_predictor():
    if not os.path.exists(PRED):
        pytest.skip("../shared not available")
    from ofa_core.predictor import AccuracyPredictor
    return AccuracyPredictor.from_published(PRED)
