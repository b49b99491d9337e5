"""Running test work in several Python threads at once."""

import threading


def run_in_threads(work, count):
    """Call ``work(i)`` for ``i < count``, each in its own Python thread, all started before any
    is joined; return the exceptions they raised (an exception in a thread does not fail a test
    by itself)."""
    errors = []

    def guarded(i):
        try:
            work(i)
        except Exception as err:  # handed to the caller
            errors.append(err)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors
