"""Independent random streams derived from the run seed.

Every random draw of a run comes from a generator seeded by a pure function of integer keys (seed, epoch,
iteration, rank, stream), so a resumed run repeats an uninterrupted one exactly and no two uses share numbers.
"""

import numpy as np

SUBSET, ORDER, AUGMENT, DROP_PATH, MASK = 1, 2, 3, 4, 5   # the stream ids (the last key)


def seed(*keys):
    """A 63-bit seed that is a pure function of integer keys."""
    hi, lo = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(hi) << 31) ^ int(lo)
