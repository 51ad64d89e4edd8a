"""Is DINO learning? Collapse diagnostics of one training step, and the warnings they raise.

DINO fails in two opposite ways that the loss alone does not tell apart (README, "Knowing whether it learns").
With q the teacher's softmax per image, q̄ its mean over the (global) batch, p the student's softmax, K out_dim:
- uniform collapse: H(q) and H(q̄) both near ln K, the student copies a flat teacher (KL(q ‖ p) -> 0);
- one-prototype collapse: H(q̄) near 0, every image goes to the same prototype;
- feature collapse: the L2-normalised backbone features stop varying across the batch.
A healthy run has H(q) low (sharp per image) and H(q̄) high: exp H(q̄) prototypes in use.

teacher_entropies(q, log_q) -> (mean H(q), H(q̄)); feature_spread(features) -> the std across the batch of the
L2-normalised features, per dimension, averaged and scaled by sqrt(d) (about 1 for features spread over the sphere,
0 when every image has the same feature); warnings(record, ln_k) -> names of the failures a log record shows.
"""

import math

import torch
import torch.nn.functional as F

UNIFORM = 0.95          # H(q) and H(q̄) above this fraction of ln K: uniform
ONE_PROTOTYPE = 0.05    # H(q̄) below this fraction of ln K: (nearly) one prototype for the whole batch
FEATURE = 0.05          # feature_spread below this: the backbone maps every image to nearly the same point


@torch.no_grad()
def teacher_entropies(q, log_q, batch_mean=None):
    """(mean per-image entropy H(q), entropy of the batch-mean distribution H(q̄)) of teacher probabilities q
    [n, K]; batch_mean: q̄ when it was averaged over more than these rows (all ranks)."""
    q_bar = q.mean(0) if batch_mean is None else batch_mean
    return -(q * log_q).sum(-1).mean(), -torch.special.xlogy(q_bar, q_bar).sum()


@torch.no_grad()
def feature_spread(features):
    """sqrt(d) x the mean over dimensions of the std across the batch of L2-normalised features [n, d]."""
    f = F.normalize(features.float(), dim=-1)
    return f.std(0, unbiased=False).mean() * math.sqrt(f.shape[1])


def warnings(record, ln_k):
    """The collapse kinds a log record with teacher_entropy, batch_entropy and feature_std shows."""
    found = []
    if record["teacher_entropy"] > UNIFORM * ln_k and record["batch_entropy"] > UNIFORM * ln_k:
        found.append("uniform")
    if record["batch_entropy"] < ONE_PROTOTYPE * ln_k:
        found.append("one prototype")
    if record["feature_std"] < FEATURE:
        found.append("feature collapse")
    return found


MESSAGES = {
    "uniform": "teacher and batch-mean entropies are both near ln(out_dim): the teacher is flat and the student "
               "copies it (uniform collapse: centring wins over sharpening; try a lower train.teacher_temp)",
    "one prototype": "the batch-mean teacher entropy is near 0: every image goes to the same prototype "
                     "(sharpening wins over centring; try a higher train.teacher_temp or train.center_momentum lower)",
    "feature collapse": "the backbone features barely vary across the batch (feature collapse)",
}
