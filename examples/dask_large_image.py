"""Convolve an image larger than the memory you give it: Zarr on disk -> dask -> Zarr on disk.

A ``SIZE x SIZE`` float32 image (default 40000 x 40000, 6.4 GB) is written to a Zarr store in
square chunks, convolved with a 5x5 filter (``padding='same'``) by :func:`numbaconv.dask.conv2d`
on a dask.distributed cluster whose workers may each hold only ``--memory-limit`` (default 1 GiB),
and written back to a second Zarr store block by block, with a progress bar. Output blocks are the
Zarr chunks, so no two tasks write the same chunk. At the end it prints the throughput and the peak
resident memory of all the processes together, and with ``--compare`` the in-memory
:func:`numbaconv.conv2d` throughput on the same image (only when it fits in memory).

Needs ``pip install numbaconv[dask]``. Examples::

    python examples/dask_large_image.py /tmp/big                  # 40000 x 40000, local cluster
    python examples/dask_large_image.py /tmp/small --size 8192 --compare
    python examples/dask_large_image.py /shared/big --scheduler tcp://10.0.0.5:8786

With ``--scheduler`` the store path must be visible to every worker (a shared file system or an
object store URL that Zarr understands).
"""

import argparse
import threading
import time

import dask.array as da
import numpy as np
import psutil
import zarr
from distributed import Client, LocalCluster, as_completed
from tqdm import tqdm

import numbaconv
import numbaconv.dask


def _write_block(block, block_info=None, path=None):
    """Write one block into its region of the Zarr array at ``path``; return a 1-element token."""
    region = tuple(slice(start, stop) for start, stop in block_info[0]["array-location"])
    zarr.open_array(path, mode="r+")[region] = block
    return np.ones((1,) * block.ndim, np.int8)


def store_with_progress(client, array, path, description):
    """Compute ``array`` into a new Zarr array at ``path`` chunked like it, one task per chunk."""
    chunk = tuple(c[0] for c in array.chunks)
    zarr.open_array(path, mode="w", shape=array.shape, chunks=chunk, dtype=array.dtype)
    tokens = array.map_blocks(_write_block, path=path, chunks=(1,) * array.ndim, dtype=np.int8)
    futures = client.compute(tokens.to_delayed().ravel().tolist())
    for future in tqdm(as_completed(futures), total=len(futures), desc=description,
                       unit="block"):
        future.release()  # drop the token at once: the scheduler may forget the task


class PeakMemory:
    """Sample the resident memory of this process and all its children (the workers)."""

    def __init__(self, interval=0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me] + me.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("directory", help="where the input.zarr and output.zarr stores go")
    parser.add_argument("--size", type=int, default=40000, help="image side (default 40000)")
    parser.add_argument("--chunk", type=int, default=2048, help="Zarr/dask chunk side")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="1GiB", help="per worker (default 1GiB)")
    parser.add_argument("--scheduler", help="address of an existing dask scheduler to use")
    parser.add_argument("--keep-input", action="store_true",
                        help="reuse directory/input.zarr if it exists with the right shape")
    parser.add_argument("--compare", action="store_true",
                        help="also time numbaconv.conv2d on the whole image in memory")
    args = parser.parse_args()
    n, chunk = args.size, args.chunk
    source, target = f"{args.directory}/input.zarr", f"{args.directory}/output.zarr"

    if args.scheduler:
        cluster, client = None, Client(args.scheduler)
    else:
        # one thread per worker and one Numba thread per task: the workers share out the cores
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1,
                               memory_limit=args.memory_limit, dashboard_address=None)
        client = Client(cluster)
    print(f"image {n} x {n} float32 = {n * n * 4 / 2**30:.1f} GiB, chunks {chunk}^2, "
          f"{len(client.scheduler_info()['workers'])} workers x {args.memory_limit}")

    with PeakMemory() as memory:
        existing = None
        if args.keep_input:
            try:
                existing = zarr.open_array(source, mode="r")
            except (FileNotFoundError, zarr.errors.NodeNotFoundError):
                existing = None
        if existing is None or existing.shape != (n, n):
            image = da.random.default_rng(0).standard_normal((n, n), dtype=np.float32,
                                                              chunks=chunk)
            store_with_progress(client, image, source, "write input")

        weight = np.outer(*2 * [np.array([1, 4, 6, 4, 1], np.float32)])[None, None] / 256
        x = da.from_zarr(source)[None]  # (C=1, H, W), unbatched
        y = numbaconv.dask.conv2d(x, weight, padding="same", chunks=chunk, num_threads=1)
        start = time.perf_counter()
        store_with_progress(client, y[0], target, "convolve")
        seconds = time.perf_counter() - start
        # (compiled, loaded from Numba's disk cache) per worker: compiled stays 0 once cached
        compile_stats = client.run(numbaconv.dask._compile_stats)
    print(f"dask: {seconds:.1f} s, {n * n / seconds / 1e6:.0f} Mpixel/s end to end (Zarr read, "
          f"convolution, Zarr write); peak resident memory of all processes "
          f"{memory.peak / 2**30:.2f} GiB")
    print(f"Numba signatures (compiled, loaded from disk cache) per worker: "
          f"{sorted(compile_stats.values())}")

    client.close()
    if cluster is not None:
        cluster.close()

    if args.compare:
        image = zarr.open_array(source, mode="r")[...][None]
        numbaconv.conv2d(image[:, :64, :64], weight, padding="same")  # compile or load first
        start = time.perf_counter()
        result = numbaconv.conv2d(image, weight, padding="same")
        in_memory = time.perf_counter() - start
        same = np.array_equal(result[0], zarr.open_array(target, mode="r")[...])
        print(f"in memory: {in_memory:.1f} s, {n * n / in_memory / 1e6:.0f} Mpixel/s "
              f"(convolution only, {numbaconv.get_num_threads()} threads); dask result "
              f"{'bit-identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
