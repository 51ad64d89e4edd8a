"""torchrun worker for tests/test_pretrain.py: train through pretrain.run, then write this rank's teacher hash.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/dist_pretrain_check.py cfg.yaml

Each rank writes <train.out>/teacher_rank<r>.sha256: the sha256 of its teacher state dict (names and bytes),
so the test can check that DDP + the EMA keep the teacher identical on every rank, and, when the pruner ran,
<train.out>/pruned_rank<r>.npy: its curated index list.
"""

import hashlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pretrain  # noqa: E402


def state_hash(module):
    h = hashlib.sha256()
    for name, value in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    trainer = pretrain.run(sys.argv[1:])
    rank = int(os.environ.get("RANK", 0))
    with open(os.path.join(trainer.out, f"teacher_rank{rank}.sha256"), "w") as f:
        f.write(state_hash(trainer.teacher) + "\n")
    if "indices" in trainer.pruner.state:
        np.save(os.path.join(trainer.out, f"pruned_rank{rank}.npy"), trainer.pruner.state["indices"].numpy())
