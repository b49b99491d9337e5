"""algorithm='tune': times the exact candidates once per problem, then reuses the fastest."""

import numpy as np
import pytest

import numbaconv
from numbaconv import dispatch, reference, tuning


@pytest.fixture(autouse=True)
def fresh_table():
    tuning.forget()
    yield
    tuning.forget()


def _data(rng, x_shape, w_shape):
    x = rng.integers(-4, 5, x_shape).astype(np.float32)
    w = rng.integers(-4, 5, w_shape).astype(np.float32)
    b = rng.integers(-4, 5, w_shape[0]).astype(np.float32)
    return x, w, b


def test_tune_is_exact_and_remembers_one_choice_per_problem(monkeypatch):
    rng = np.random.default_rng(0)
    x, w, b = _data(rng, (2, 8, 11, 9), (6, 8, 3, 3))
    timed = []
    real_choose = tuning.choose

    def spy(problem, run, names):
        timed.append(tuple(names))
        return real_choose(problem, run, names)

    monkeypatch.setattr(tuning, "choose", spy)
    y1 = numbaconv.conv2d(x, w, b, padding=1, algorithm="tune")
    assert np.array_equal(y1, reference.conv2d(x, w, b, padding=1))
    (choice,) = tuning.choices().values()
    problem = numbaconv.explain(x, w, b, padding=1).problem
    usable = {n for n, why in dispatch.candidates(problem, exact=True).items()
              if why is None} - {"reference"}
    assert set(timed[0]) == usable and choice in usable
    # a second call does not time again; its result is the chosen algorithm's, bit for bit
    xr = rng.standard_normal(x.shape).astype(np.float32)
    y2 = numbaconv.conv2d(xr, w, b, padding=1, algorithm="tune")
    assert tuning.choices() == {(str(problem), numbaconv.get_num_threads()): choice}
    assert np.array_equal(y2, numbaconv.conv2d(xr, w, b, padding=1, algorithm=choice))


@pytest.mark.parametrize("call", ["conv1d", "conv_transpose2d", "depthwise"])
def test_tune_on_other_kinds_of_problem(call):
    rng = np.random.default_rng(1)
    if call == "conv1d":
        x, w, b = _data(rng, (1, 4, 30), (5, 4, 3))
        y = numbaconv.conv1d(x, w, b, stride=2, algorithm="tune")
        want = reference.conv1d(x, w, b, stride=2)
    elif call == "conv_transpose2d":
        x, w, b = _data(rng, (1, 4, 7, 6), (4, 3, 3, 3))
        y = numbaconv.conv_transpose2d(x, w, b[:3], stride=2, algorithm="tune")
        want = reference.conv_transpose2d(x, w, b[:3], stride=2)
    else:
        x, w, b = _data(rng, (1, 6, 12, 12), (12, 1, 3, 3))
        y = numbaconv.conv2d(x, w, b, padding="same", groups=6, algorithm="tune")
        want = reference.conv2d(x, w, b, padding="same", groups=6)
    assert np.array_equal(y, want)
    assert len(tuning.choices()) == 1


def test_empty_batch_does_not_tune():
    y = numbaconv.conv2d(np.zeros((0, 3, 8, 8), np.float32), np.ones((4, 3, 3, 3), np.float32),
                         algorithm="tune")
    assert y.shape == (0, 4, 6, 6) and tuning.choices() == {}


def test_choices_survive_save_and_load(tmp_path):
    rng = np.random.default_rng(2)
    x, w, b = _data(rng, (1, 3, 10, 10), (4, 3, 3, 3))
    numbaconv.conv2d(x, w, b, algorithm="tune")
    x64 = x.astype(np.float64)
    numbaconv.conv_transpose2d(x64, np.ones((3, 2, 2, 2)), stride=2, algorithm="tune")
    saved = tuning.choices()
    assert len(saved) == 2
    path = tmp_path / "tuned.json"
    tuning.save(path)
    tuning.forget()
    assert tuning.choices() == {}
    tuning.load(path)
    assert tuning.choices() == saved


def test_load_rejects_malformed_files(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"problem": 1}')
    with pytest.raises(ValueError, match="expected a list"):
        tuning.load(path)
    path.write_text('[{"problem": "mb1ic3ih8oc4kh3"}]')
    with pytest.raises(ValueError, match="malformed entry"):
        tuning.load(path)
    path.write_text('[{"problem": "nonsense", "threads": 2, "algorithm": "gemm"}]')
    with pytest.raises(ValueError, match="cannot parse"):
        tuning.load(path)


def test_dask_refuses_tune():
    da = pytest.importorskip("dask.array")
    import numbaconv.dask as ndask
    x = da.ones((1, 3, 16, 16), chunks=(1, 3, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match="'tune' is not supported"):
        ndask.conv2d(x, np.ones((4, 3, 3, 3), np.float32), algorithm="tune")
