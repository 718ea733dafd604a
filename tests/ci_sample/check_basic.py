import pytest


def test_adds():
    assert 2 + 3 == 5


@pytest.mark.parametrize("n", [1, 7])
def test_square_is_positive(n):
    assert n * n > 0


class TestStrings:
    def test_upper(self):
        assert "ci".upper() == "CI"


def test_fails_on_purpose():
    assert sum([1, 2]) == 4, "this sample test fails on purpose"


def test_skipped():
    pytest.skip("no widget on this machine")


@pytest.mark.slow
def test_deselected_by_the_project():
    raise AssertionError("the project's addopts deselect slow tests")
