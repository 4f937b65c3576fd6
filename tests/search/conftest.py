import os

import pytest

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "ofa-reference")
NOTE10 = os.path.join(SHARED, "note10")
PRED = os.path.join(SHARED, "acc_predictor.pth")


@pytest.fixture(scope="session")
def note10():
    assert os.path.isdir(NOTE10), f"the published Note10 tables are expected at {NOTE10} (../shared beside the checkout)"
    from ofa_core.latency import LatencyTable
    return LatencyTable.from_note10_dir(NOTE10)


@pytest.fixture(scope="session")
def published_predictor():
    assert os.path.exists(PRED), f"the published predictor is expected at {PRED} (../shared beside the checkout)"
    from ofa_core.predictor import AccuracyPredictor
    return AccuracyPredictor.from_published(PRED)
