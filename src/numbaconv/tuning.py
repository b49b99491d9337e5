"""``algorithm='tune'``: time the candidates on the caller's own problem once, keep the fastest.

The ``auto`` rule is a few thresholds measured on one machine; on another CPU, or for a shape the
rule did not foresee, another algorithm can be faster. With ``algorithm='tune'`` the first call
of each distinct problem (shapes, hyper-parameters, dtype, and the thread count) runs every
algorithm that can compute it, except the reference, and times it; later calls use the fastest
straight away. The first call therefore costs the compilation of every candidate (seconds,
once per installation with the on-disk cache) plus a few runs of each.

Every tuned choice is an exact algorithm unless the call allows inexact ones, so results agree
with the reference exactly on integer data. On other data two algorithms may differ in the last
bits (they sum in different orders), and timing noise can make two processes choose
differently: :func:`save` the table and :func:`load` it where reproducible bits matter.
"""

import json
import threading
import time

from . import _threads
from .problem import ConvProblem

# Timed runs per candidate: at least this many, and until this much time has passed.
_MIN_RUNS = 3
_MIN_SECONDS = 0.02

_table = {}          # (ConvProblem, threads) -> algorithm name
_lock = threading.Lock()


def _key(problem):
    return problem, _threads.get_num_threads()


def choose(problem, run, names):
    """The fastest of ``names`` for ``problem``, timing them with ``run(name)`` the first time.

    ``run(name)`` computes the problem once with that algorithm. The choice is kept per problem
    and thread count. The timing is the best of at least :data:`_MIN_RUNS` runs, after one
    untimed run (compilation, caches).
    """
    key = _key(problem)
    with _lock:
        known = _table.get(key)
    if known is not None and known in names:
        return known
    fastest_name = fastest(run, names)
    with _lock:
        _table[key] = fastest_name
    return fastest_name


def fastest(run, names):
    """The name in ``names`` whose ``run(name)`` takes least time: the best of at least
    :data:`_MIN_RUNS` runs each, after one untimed run. Nothing is remembered."""
    timings = {}
    for name in names:
        run(name)
        best, runs, spent = float("inf"), 0, 0.0
        while runs < _MIN_RUNS or spent < _MIN_SECONDS:
            start = time.perf_counter()
            run(name)
            elapsed = time.perf_counter() - start
            best, runs, spent = min(best, elapsed), runs + 1, spent + elapsed
        timings[name] = best
    return min(timings, key=timings.get)


def choices():
    """The tuned choices so far: ``{(problem descriptor, threads): algorithm name}``."""
    with _lock:
        return {(str(p), t): name for (p, t), name in _table.items()}


def forget():
    """Drop every tuned choice (the next ``'tune'`` call of each problem times again)."""
    with _lock:
        _table.clear()


def save(path):
    """Write the tuned choices to a JSON file at ``path``."""
    rows = [{"problem": p, "threads": t, "algorithm": name}
            for (p, t), name in sorted(choices().items())]
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)


def load(path):
    """Add the choices in a JSON file written by :func:`save` (they replace existing ones)."""
    with open(path) as f:
        rows = json.load(f)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a list of tuned choices, got {type(rows).__name__}")
    parsed = {}
    for row in rows:
        try:
            problem = ConvProblem.from_descriptor(row["problem"])
            threads, name = int(row["threads"]), str(row["algorithm"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path}: malformed entry {row!r}: {err}") from None
        parsed[problem, threads] = name
    with _lock:
        _table.update(parsed)
