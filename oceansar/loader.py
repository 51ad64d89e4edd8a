"""Feeding the training loop: each rank's batches of an epoch, read from the shards in a background thread.

    batches = loader.rank_batches(indices, epoch, seed, iters_per_epoch, batch_per_rank, rank, world)
    reader = loader.Prefetcher(dataset, batches, start=0, depth=4, pin=False)
    x = reader.next()          # float32 [batch_per_rank, 1, H, W], normalised; reader.close() at the end
"""

import copy
import queue
import threading

import numpy as np
import torch

from . import shards
from . import streams


def rank_batches(indices, epoch, seed, ipe, batch_per_rank, rank, world):
    """This rank's [ipe, batch_per_rank] dataset indices: the (seed, epoch) shuffle of `indices`, cycled."""
    order = np.random.default_rng([seed, epoch, streams.ORDER]).permutation(indices)
    order = np.resize(order, ipe * world * batch_per_rank)  # repeats the shuffled list when it is shorter
    return order.reshape(ipe, world, batch_per_rank)[:, rank]


class Prefetcher:
    """Reads batches[start:] from the shards in a background thread, `depth` batches ahead (CPU tensors).

    The thread owns a private copy of the dataset (its own memory maps) and releases the maps when done, so
    the pages an epoch touched do not stay in the process's RSS.
    """

    def __init__(self, dataset, batches, start, depth, pin):
        self.dataset, self.pin = copy.copy(dataset), pin
        self.queue, self.stop = queue.Queue(maxsize=depth), threading.Event()
        self.thread = threading.Thread(target=self._read, args=(batches, start), daemon=True)
        self.thread.start()

    def _read(self, batches, start):
        try:
            for idx in batches[start:]:
                if self.stop.is_set():
                    break
                x = torch.from_numpy(self.dataset.read_batch(idx))
                self._put(x.pin_memory() if self.pin else x)
        except Exception as e:  # handed to the consumer, which re-raises it
            self._put(e)
        finally:
            self.dataset.release()

    def _put(self, item):
        while not self.stop.is_set():
            try:
                return self.queue.put(item, timeout=0.1)
            except queue.Full:
                continue

    def next(self):
        item = self.queue.get()
        if isinstance(item, Exception):
            raise shards.DataError(f"reading shards of {self.dataset.folder} failed: {item}") from item
        return item

    def close(self):
        self.stop.set()
        self.thread.join()
