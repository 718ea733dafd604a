import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng()


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.benchmark_suite)


def pytest_configure(config):
    config.addinivalue_line("markers", "benchmark_suite: a benchmark, not a test")
