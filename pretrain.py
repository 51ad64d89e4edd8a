"""DINO self-supervised pretraining on prepared SAR shards, with a per-epoch training subset (pruning hook).

Reads   <train.data>/  (a shards.py dataset; images are memory-mapped, never loaded whole)
Writes  <train.out>/config.yaml          the resolved config
        <train.out>/checkpoint.pt        rolling full state (atomic), at every epoch end and every
                                         train.checkpoint_iters iterations; a snapshot checkpoint_e<NNNN>.pt
                                         after every train.checkpoint_every completed epochs
        <train.out>/log.jsonl            one record per train.log_every iterations and per epoch
        <train.out>/curves.png           the run drawn from log.jsonl at every checkpoint (curves.py)
        <train.out>/curation_e<NNNN>.png the kept set of a curation, by cluster (prune.py; at most 12 per run)
        <train.out>/backbone.pt          the teacher backbone's state dict alone (plain load_state_dict works)

Commands (same code path for all; the process group comes from the torchrun environment when WORLD_SIZE > 1):
    python pretrain.py configs/demo.yaml train.device=cpu train.epochs=1      # CPU smoke
    python pretrain.py configs/oceansar1.yaml                                   # one GPU
    torchrun --nproc_per_node=8 pretrain.py configs/oceansar1.yaml              # one node, 8 GPUs
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_id=oceansar1 \\
             --rdzv_endpoint=<host0>:29500 pretrain.py configs/oceansar1.yaml  # 4 nodes (run on each node)
A run resumes automatically from <out>/checkpoint.pt (train.resume=false starts over). Exit codes: 0 done,
1 bad input or state (one-line message: a corrupt shard, an unreadable checkpoint, a full disk, a lost peer
process), 2 bad config (including a missing train.data or an unwritable train.out, checked before any work),
3 non-finite loss (the message says whether the input batch was non-finite and which checkpoint exists).
train.verify (--verify) hashes every shard before training; each shard is hashed anyway when first read.

checkpoint.pt (torch.load(path, weights_only=True) reads it) holds: student, teacher (MultiCropWrapper state
dicts, so weights.load_backbone_weights(backbone, checkpoint) takes the teacher backbone), optimizer, dino_loss
(the centre; dinov2: center and ibot_center), epoch (of `indices`), iteration (the next one to run),
iters_per_epoch, global_batch, rng
(torch, numpy, python, cuda states), config (plain data), indices (the epoch's subset, int64) and pruner_state.

The recipe (see README, "The method"): multi-crop DINO with a centred, sharpened EMA teacher; per-iteration schedules
(lr with linear warm-up, scaled by global_batch/256, cosine to min_lr; weight decay cosine; teacher momentum
cosine to 1; teacher temperature linear warm-up) computed once over the whole run. One epoch is
ceil(ceil(prune.rho * N) / global_batch) iterations for every epoch and every pruning mode.
train.objective=dinov2 (OceanSAR-2, ViT only) adds block-masked student globals, the iBOT patch loss and KoLeo
(dinov2.py; README "2b"); its masks come from a (seed, epoch, iteration, rank) generator like the augmentations.

Data path: `epoch_indices` gives the epoch's subset of the archive (uniform random for prune.mode=none and in
warm-up; prune.py curates it otherwise, keeping its state in the checkpoint's `pruner_state`). The subset is
shuffled by a (seed, epoch) generator, cycled to iters_per_epoch * global_batch and dealt to ranks, so every
rank runs the same number of steps. A background thread reads raw crops from the memory-mapped shards; the SAR
augmentations run batched on the training device from a generator seeded by (seed, epoch, iteration, rank), and
drop-path's global RNG is reseeded per iteration, so a resumed run repeats an uninterrupted one exactly.
"""

import os

# Before torch loads OpenMP: threads that spin while idle slow a small shared CPU several-fold. A wait
# policy the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import copy
import json
import math
import queue
import random
import shutil
import sys
import threading
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import collapse
import config
import curves
import dinov2
import model as models
import prune
from augment import SARAugment
from shards import ShardDataset, near_constant_warning

EXIT_NON_FINITE = 3
# Independent random streams derived from the run seed (numpy SeedSequence keys).
STREAM_SUBSET, STREAM_ORDER, STREAM_AUG, STREAM_DROP_PATH, STREAM_MASK = 1, 2, 3, 4, 5


class PretrainError(config.UserError, RuntimeError):
    """A problem with the run's inputs or state, reported as one line (exit code 1)."""


class NonFiniteLoss(PretrainError):
    """The loss became NaN/inf (exit code 3)."""
    code = EXIT_NON_FINITE


def stream_seed(*keys):
    """A 63-bit seed that is a pure function of integer keys (seed, epoch, iteration, rank, stream)."""
    hi, lo = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(hi) << 31) ^ int(lo)


# ---------------------------------------------------------------------------------------------- distributed
def setup_distributed(device_choice):
    """(rank, world, device); joins the torchrun process group (NCCL on CUDA, gloo on CPU) when WORLD_SIZE > 1."""
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_choice == "cuda" and not torch.cuda.is_available():
        raise PretrainError("train.device=cuda but no CUDA device is available")
    use_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, device


def all_reduce_mean(t):
    if dist.is_initialized():
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


# ---------------------------------------------------------------------------------------------- schedules
def subset_size(rho, n):
    """Images in one epoch's training subset: ceil(rho * N), at least 1 (tolerant to float fuzz)."""
    return min(n, max(1, math.ceil(rho * n - 1e-9)))


def iters_per_epoch(rho, n, global_batch):
    return math.ceil(subset_size(rho, n) / global_batch)


def cosine_schedule(start, end, total, warmup=0, warmup_start=0.0):
    """Per-iteration values: linear warmup_start -> start over `warmup` iterations, then cosine start -> end.

    The first post-warm-up iteration is exactly `start` and the last iteration exactly `end`.
    """
    warmup = min(warmup, total)
    ramp = warmup_start + (start - warmup_start) * np.arange(warmup) / max(warmup, 1)
    n = total - warmup
    cos = end + 0.5 * (start - end) * (1 + np.cos(np.pi * np.arange(n) / max(n - 1, 1)))
    return np.concatenate([ramp, cos])


def build_schedules(t, ipe, global_batch):
    """lr, wd, momentum and teacher_temp as float64 arrays of length epochs * iters_per_epoch."""
    total = t["epochs"] * ipe
    lr = cosine_schedule(t["lr"] * global_batch / 256, t["min_lr"], total, warmup=t["warmup_epochs"] * ipe)
    wd = cosine_schedule(t["weight_decay"], t["weight_decay_end"], total)
    momentum = cosine_schedule(t["momentum_teacher"], 1.0, total)
    warm = min(t["warmup_teacher_temp_epochs"] * ipe, total)
    temp = np.full(total, t["teacher_temp"])
    temp[:warm] = np.linspace(t["warmup_teacher_temp"], t["teacher_temp"], warm)
    ibot_temp = np.full(total, t["ibot_teacher_temp"])  # dinov2's patch-token teacher, same warm-up length
    ibot_temp[:warm] = np.linspace(t["ibot_warmup_teacher_temp"], t["ibot_teacher_temp"], warm)
    return {"lr": lr, "wd": wd, "momentum": momentum, "teacher_temp": temp, "ibot_teacher_temp": ibot_temp}


# ---------------------------------------------------------------------------------------------- DINO loss
class DINOLoss(nn.Module):
    """Cross-entropy between each centred, sharpened teacher global view and every *other* student view."""

    def __init__(self, out_dim, n_crops, student_temp=0.1, center_momentum=0.9):
        super().__init__()
        self.n_crops, self.student_temp, self.center_momentum = n_crops, student_temp, center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def forward(self, student_out, teacher_out, teacher_temp):
        """Returns (loss, [H(q), H(q̄)]): the loss and the teacher's per-image and batch-mean entropies (q̄ over
        all ranks); updates the centre from this batch's teacher output."""
        batch = len(student_out) // self.n_crops
        log_p = F.log_softmax(student_out.float() / self.student_temp, dim=-1).view(self.n_crops, batch, -1)
        log_q = F.log_softmax((teacher_out.float().detach() - self.center) / teacher_temp, dim=-1)
        q = log_q.exp().view(-1, batch, log_q.shape[-1])
        # ce[i, v] = mean over the batch of -sum_k q_i log p_v: one batched contraction for all view pairs.
        ce = -torch.einsum("ibk,vbk->iv", q, log_p) / batch
        same_view = torch.eye(len(q), self.n_crops, dtype=torch.bool, device=ce.device)
        loss = ce[~same_view].mean()
        with torch.no_grad():
            q_flat = q.view(-1, q.shape[-1])
            entropies = collapse.teacher_entropies(q_flat, log_q, all_reduce_mean(q_flat.mean(0)))
            self.update_center(teacher_out.float())
        return loss, torch.stack(entropies)

    @torch.no_grad()
    def update_center(self, teacher_out):
        """EMA of the teacher's mean output over the global batch (all ranks have the same batch size)."""
        batch_center = teacher_out.sum(0, keepdim=True)
        count = len(teacher_out)
        if dist.is_initialized():
            dist.all_reduce(batch_center)
            count *= dist.get_world_size()
        self.center.mul_(self.center_momentum).add_(batch_center / count, alpha=1 - self.center_momentum)


# ---------------------------------------------------------------------------------------------- data
def epoch_indices(epoch, dataset, cfg, pruner_state, backbone=None, device="cpu"):
    """The training subset of `epoch` as a sorted int64 array, identical on every rank.

    Returns (indices, pruner_state, curation diagnostics or None). Warm-up epochs and prune.mode=none draw a
    fresh uniform random ceil(rho * N) subset from a (seed, epoch) generator. After prune.warmup_epochs, static
    mode curates once and keeps that subset; dynamic mode re-curates every prune.every epochs with the teacher
    backbone's own features (prune.rebalance). pruner_state (saved in every checkpoint, tensors and plain data
    only) holds the curated indices, the epoch they were drawn at and the hierarchy's centroids, so a resumed
    run continues the same curation.
    """
    p = cfg["prune"]
    if p["mode"] == "none" or epoch < p["warmup_epochs"]:
        n = len(dataset)
        rng = np.random.default_rng([cfg["train"]["seed"], epoch, STREAM_SUBSET])
        keep = rng.choice(n, size=subset_size(p["rho"], n), replace=False)
        return np.sort(keep).astype(np.int64), pruner_state, None
    due = "indices" not in pruner_state or (p["mode"] == "dynamic" and (epoch - p["warmup_epochs"]) % p["every"] == 0)
    if not due:
        return pruner_state["indices"].numpy(), pruner_state, None
    indices, info, pool, clusters = prune.rebalance(backbone, dataset, cfg, epoch, device)
    prune.curation_montage(dataset, pool, clusters.leaf.numpy(), indices, cfg, epoch)
    state = {"indices": torch.from_numpy(indices), "epoch": epoch, "centroids": clusters.centroids, "info": info}
    return indices, state, info


def rank_batches(indices, epoch, seed, ipe, batch_per_rank, rank, world):
    """This rank's [ipe, batch_per_rank] dataset indices: the (seed, epoch) shuffle of `indices`, cycled."""
    order = np.random.default_rng([seed, epoch, STREAM_ORDER]).permutation(indices)
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
            raise PretrainError(f"reading shards of {self.dataset.folder} failed: {item}") from item
        return item

    def close(self):
        self.stop.set()
        self.thread.join()


# ---------------------------------------------------------------------------------------------- model and optimiser
def build_student_teacher(cfg, device):
    """Student (with drop-path) and teacher (without) MultiCropWrappers (DINOv2Wrappers for objective dinov2)
    with identical initial weights."""
    m, t = cfg["model"], cfg["train"]
    gen = lambda: torch.Generator().manual_seed(t["seed"])  # noqa: E731
    v2 = t["objective"] == "dinov2"
    vit_options = {"layerscale": m["layerscale"], "registers": m["registers"], "mask_token": v2}
    make_head = lambda dim: models.DINOHead(dim, m["out_dim"], m["head_hidden_dim"], m["head_bottleneck_dim"],  # noqa: E731
                                            norm_last_layer=m["norm_last_layer"], generator=gen())
    nets = []
    for is_student, drop in ((True, m["drop_path"]), (False, 0.0)):
        backbone = models.build_backbone(m["arch"], m["patch_size"], t["global_crops_size"], drop, generator=gen(),
                                         width=m["width"], **(vit_options if m["arch"].startswith("vit") else {}))
        head = make_head(backbone.embed_dim)
        if v2:
            ibot_head = make_head(backbone.embed_dim) if t["ibot_separate_head"] else None
            nets.append(dinov2.DINOv2Wrapper(backbone, head, ibot_head, mask_input=is_student).to(device))
        else:
            nets.append(models.MultiCropWrapper(backbone, head).to(device))
    student, teacher = nets
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def param_groups(net):
    """AdamW groups: weight decay on matrices/kernels only, never on biases and norm scales (ndim <= 1)."""
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    return [{"params": [p for n, p in trainable if p.ndim > 1], "decay": True},
            {"params": [p for n, p in trainable if p.ndim <= 1], "decay": False, "weight_decay": 0.0}]


def clip_gradients(params, clip):
    """DINO-style: scale each parameter's gradient to norm <= clip separately; returns the pre-clip norms."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack(torch._foreach_norm(grads))
    if clip > 0:
        torch._foreach_mul_(grads, list((clip / (norms + 1e-6)).clamp(max=1.0).unbind()))
    return norms


@torch.no_grad()
def ema_update(teacher_params, student_params, momentum):
    """teacher <- momentum * teacher + (1 - momentum) * student, over all parameters at once."""
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)


def train_flops_per_image(backbone, head, t):
    """Matmul FLOPs one image costs in a step: student fwd+bwd (3x) on all crops, teacher fwd on globals."""
    g = models.flops_per_image(backbone, t["global_crops_size"])
    loc = models.flops_per_image(backbone, t["local_crops_size"]) if t["local_crops_number"] else 0
    h = head.flops_per_sample()
    student = 2 * g + t["local_crops_number"] * loc + (2 + t["local_crops_number"]) * h
    return 3 * student + 2 * (g + h)


def measure_peak_flops(device, seconds=0.5):
    """Best achieved FLOP/s of a large matmul (fp32 on CPU, bf16 on CUDA: the precisions training runs in).

    The best single product, not the average, so a busy machine lowers the estimate as little as possible."""
    n, dtype = (2048, torch.float32) if device.type == "cpu" else (8192, torch.bfloat16)
    a = torch.randn(n, n, device=device, generator=torch.Generator(device).manual_seed(0)).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ a
    sync()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        a @ a
        sync()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


# ---------------------------------------------------------------------------------------------- checkpoints
def rng_states():
    s = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [s[0], torch.from_numpy(s[1].astype(np.int64)), *s[2:]],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_states(s):
    torch.set_rng_state(s["torch"])
    np.random.set_state((s["numpy"][0], s["numpy"][1].numpy().astype(np.uint32), *s["numpy"][2:]))
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in s["python"]))
    if s["cuda"] and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])


def atomic_save(obj, path):
    """torch.save to a temporary name, fsync, then rename: a reader never sees a half-written file.

    A failed write (disk full, quota) removes the partial file, which would otherwise keep the disk full, and
    stops with one line naming the path and the free space; the previous file at `path` is untouched."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a short write as "unexpected pos"
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, RuntimeError) and "unexpected pos" not in str(e) and "write" not in str(e).lower():
            raise
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
        reason = e.strerror if isinstance(e, OSError) and e.strerror else "the write was cut short"
        raise PretrainError(f"could not write {path} ({reason}); {free / 2**20:.0f} MiB free on its disk; the "
                            f"partial {os.path.basename(tmp)} was removed") from None
    os.replace(tmp, path)


def load_checkpoint(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise PretrainError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0]}); move it away to start over")


def load_strict(module, state, what, path):
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise PretrainError(f"{path}: the {what} in the checkpoint does not match the configured model "
                           f"(different model.* settings?): {str(e).splitlines()[0]}") from None


# ---------------------------------------------------------------------------------------------- logging and eval
def periodic_eval(backbone, cfg, device):
    """evaluate.knn_eval(backbone, eval_data, device) when evaluate.py provides it, else None."""
    try:
        import evaluate
    except ImportError:
        return None
    if not hasattr(evaluate, "knn_eval") or not cfg["train"]["eval_data"]:
        return None
    was_training = backbone.training
    try:
        with torch.no_grad():
            return evaluate.knn_eval(backbone, cfg["train"]["eval_data"], device)
    finally:
        backbone.train(was_training)


def curation_share(log_path):
    """Curation (embedding + k-means + sampling) vs training wall time over the whole run, resumes included:
    every epoch record of log.jsonl (an interrupted epoch and its resumed rest are both time spent; epoch_s
    includes the epoch's curation_s, not its kNN evaluation)."""
    epochs = [r for r in map(json.loads, open(log_path)) if r.get("event") == "epoch"]
    cur = sum(r["curation_s"] for r in epochs if "curation" in r)  # a uniform subset draw is not a curation
    train = sum(r["epoch_s"] for r in epochs) - cur
    return {"curation_s": cur, "train_s": train, "curation_share": cur / train if train > 0 else 0.0}


class RunLog:
    """Appends JSON records to <out>/log.jsonl (rank 0 only; other ranks get a no-op)."""

    def __init__(self, path, enabled, fresh):
        self.path, self.enabled = path, enabled
        if enabled and fresh:
            open(path, "w").close()

    def write(self, **record):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------- training
class Trainer:
    """One pretraining run: models, optimiser, schedules, data and run state. fit() trains to the end."""

    def __init__(self, cfg):
        self.cfg, self.t = cfg, cfg["train"]
        t = self.t
        self.rank, self.world, self.device = setup_distributed(t["device"])
        self.main = self.rank == 0
        self.out, self.ckpt_path = t["out"], os.path.join(t["out"], "checkpoint.pt")
        if self.main:
            os.makedirs(self.out, exist_ok=True)
            config.save(cfg, self.out)
        self.dataset = ShardDataset(t["data"], verify=t["verify"])
        if self.main and (warning := near_constant_warning(self.dataset)):
            tqdm.write(f"warning: train.data {warning}", file=sys.stderr)
        if t["eval_every"] and t["eval_data"] and not os.path.isfile(os.path.join(t["eval_data"], "manifest.json")):
            raise PretrainError(f"train.eval_data={t['eval_data']} is not a prepared dataset "
                                f"(set train.eval_every=0 to train without the periodic kNN)")
        self.global_batch = t["batch_size_per_gpu"] * self.world
        self.ipe = iters_per_epoch(cfg["prune"]["rho"], len(self.dataset), self.global_batch)
        self.total_iters = t["epochs"] * self.ipe
        self.stop_at = min(self.total_iters, t["max_iters"] or self.total_iters)
        self.sched = build_schedules(t, self.ipe, self.global_batch)

        self.student, self.teacher = build_student_teacher(cfg, self.device)
        if self.device.type == "cuda" and self.world > 1:  # ResNet: batch statistics over all GPUs
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
            self.teacher = nn.SyncBatchNorm.convert_sync_batchnorm(self.teacher)
        self.optimizer = torch.optim.AdamW(param_groups(self.student))
        self.v2, n_crops = t["objective"] == "dinov2", 2 + t["local_crops_number"]
        if self.v2:  # kept under the checkpoint key dino_loss: its centres are the loss state either way
            self.dino_loss = dinov2.DINOv2Loss(cfg["model"]["out_dim"], n_crops, t["student_temp"],
                                               t["ibot_student_temp"], t["center_momentum"], t["centering"],
                                               t["ibot_weight"], t["koleo_weight"]).to(self.device)
        else:
            self.dino_loss = DINOLoss(cfg["model"]["out_dim"], n_crops, t["student_temp"],
                                      t["center_momentum"]).to(self.device)
        self.loss_terms = {}
        self.augment = SARAugment(cfg, self.dataset.std)

        self.iteration, self.indices, self.pruner_state = 0, None, {}
        resumed = t["resume"] and os.path.exists(self.ckpt_path)
        if resumed:
            self.resume()
        self.log = RunLog(os.path.join(self.out, "log.jsonl"), self.main, fresh=not resumed)
        if resumed:
            self.log.write(event="resumed", iteration=self.iteration, epoch=self.iteration // self.ipe)
            self.say(f"resuming from {self.ckpt_path} at iteration {self.iteration} "
                     f"(epoch {self.iteration // self.ipe})")

        self.student_fwd, self.teacher_fwd = self.student, self.teacher
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.student_fwd = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)
        if t["compile"]:
            self.student_fwd, self.teacher_fwd = torch.compile(self.student_fwd), torch.compile(self.teacher)
        self.trainable = [p for p in self.student.parameters() if p.requires_grad]
        self.s_params, self.t_params = list(self.student.parameters()), list(self.teacher.parameters())
        self.last_layer = [p for n, p in self.student.named_parameters() if "last_layer" in n.split(".")]

        self.peak = measure_peak_flops(self.device)
        self.flops_img = train_flops_per_image(self.student.backbone, self.student.head, t)
        self.ln_k = math.log(cfg["model"]["out_dim"])
        self.say(f"{len(self.dataset)} images, {self.ipe} iterations/epoch of {self.global_batch} ({self.world} x "
                 f"{t['batch_size_per_gpu']}), {self.total_iters} iterations; "
                 f"{models.count_params(self.student.backbone) / 1e6:.1f}M backbone parameters, "
                 f"{self.flops_img / 1e9:.2f} GFLOP per image and step; "
                 f"peak {self.peak / 1e9:.0f} GFLOP/s on {self.device}")

    def say(self, message):
        if self.main:
            tqdm.write(message)

    # ---- state
    def resume(self):
        ck = load_checkpoint(self.ckpt_path)
        if (ck["iters_per_epoch"], ck["global_batch"]) != (self.ipe, self.global_batch):
            raise PretrainError(f"{self.ckpt_path}: saved with {ck['iters_per_epoch']} iterations/epoch at global "
                               f"batch {ck['global_batch']}, this run has {self.ipe} at {self.global_batch} (resuming "
                               f"needs the same world size, batch and prune.rho; train.resume=false starts over)")
        load_strict(self.student, ck["student"], "student", self.ckpt_path)
        load_strict(self.teacher, ck["teacher"], "teacher", self.ckpt_path)
        load_strict(self.dino_loss, ck["dino_loss"], "DINO centre", self.ckpt_path)
        self.optimizer.load_state_dict(ck["optimizer"])
        set_rng_states(ck["rng"])
        self.iteration, self.pruner_state = ck["iteration"], ck["pruner_state"]
        if self.iteration // self.ipe == ck["epoch"]:  # stopped inside an epoch: finish it on the same subset
            self.indices = ck["indices"].numpy()

    def save(self, epoch, snapshot=False):
        """Rank 0 writes the full state to <out>/checkpoint.pt (atomically); a snapshot is a hard link to it."""
        if not self.main:
            return
        state = {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "dino_loss": self.dino_loss.state_dict(),
                 "epoch": epoch, "iteration": self.iteration, "iters_per_epoch": self.ipe,
                 "global_batch": self.global_batch, "rng": rng_states(), "config": config.as_json(self.cfg),
                 "indices": torch.from_numpy(np.asarray(self.indices, dtype=np.int64)),
                 "pruner_state": self.pruner_state}
        atomic_save(state, self.ckpt_path)
        if snapshot:
            snap = os.path.join(self.out, f"checkpoint_e{epoch + 1:04d}.pt")
            if os.path.exists(snap):
                os.remove(snap)
            os.link(self.ckpt_path, snap)  # the rolling file is replaced by rename, so the link keeps this version

    # ---- one iteration
    def masks(self, epoch, it, n):
        """dinov2: [n, patches] block masks of the global crops from a (seed, epoch, iteration, rank) generator."""
        t, grid = self.t, self.t["global_crops_size"] // self.cfg["model"]["patch_size"]
        rng = np.random.default_rng(stream_seed(t["seed"], epoch, it, self.rank, STREAM_MASK))
        masks = dinov2.sample_masks(n, (grid, grid), t["mask_probability"], t["mask_ratio"], rng)
        return masks.to(self.device)

    def step(self, x, epoch):
        """One DINO (or DINOv2) update on this rank's raw batch x; returns the loss and the collapse diagnostics
        (teacher entropy, batch-mean entropy, feature spread of the teacher's backbone), averaged over ranks. The
        loss is the DINO class-token term under both objectives; dinov2's terms go to self.loss_terms."""
        it, t = self.iteration, self.t
        gen = torch.Generator(self.device).manual_seed(stream_seed(t["seed"], epoch, it, self.rank, STREAM_AUG))
        crops = self.augment(x, gen)
        torch.manual_seed(stream_seed(t["seed"], it, self.rank, STREAM_DROP_PATH))  # drop-path masks
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.sched["lr"][it])
            if group["decay"]:
                group["weight_decay"] = float(self.sched["wd"][it])
        masks = (self.masks(epoch, it, 2 * len(x)),) if self.v2 else ()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            with torch.no_grad():
                t_out, t_feats = self.teacher_fwd(crops[:2], *masks, return_backbone_features=True)
            s_out = self.student_fwd(crops, *masks)
        temp = float(self.sched["teacher_temp"][it])  # the losses run in fp32, outside autocast
        if self.v2:
            loss, entropies, terms = self.dino_loss(s_out, t_out, *masks, temp, float(self.sched["ibot_teacher_temp"][it]))
        else:
            (loss, entropies), terms = self.dino_loss(s_out, t_out, temp), {}
        stats = torch.cat([loss.detach()[None], entropies, collapse.feature_spread(t_feats)[None],
                           *[v[None] for v in terms.values()]])
        loss_value, entropy, batch_entropy, feature_std, *values = all_reduce_mean(stats.float()).tolist()
        self.loss_terms = dict(zip(terms, values), **({"loss_total": loss_value} if self.v2 else {}))
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(self.non_finite_message(x, loss_value, epoch))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(self.trainable, t["clip_grad"])
        if epoch < t["freeze_last_layer"]:
            for p in self.last_layer:
                p.grad = None
        self.optimizer.step()
        ema_update(self.t_params, self.s_params, float(self.sched["momentum"][it]))
        self.iteration += 1
        # KL(q || p) averaged over the view pairs = cross-entropy - H(q): every teacher view meets as many students
        dino_value = self.loss_terms.get("loss_dino", loss_value)
        return dino_value, {"teacher_entropy": entropy, "batch_entropy": batch_entropy,
                            "kl_teacher_student": dino_value - entropy, "feature_std": feature_std}

    def non_finite_message(self, x, loss_value, epoch):
        """What caused a NaN/inf loss (the data or the optimisation) and what is on disk to resume from."""
        bad = int((~torch.isfinite(x)).sum())
        cause = (f"the input batch holds {bad} non-finite pixel(s): {self.t['data']} is damaged (check it with "
                 f"--verify, or prepare it again)" if bad else
                 "the input batch is finite: lower train.lr or raise train.warmup_epochs")
        state = f"no checkpoint was written yet in {self.out}; a rerun starts over"
        if os.path.exists(self.ckpt_path):
            try:
                saved = f"iteration {load_checkpoint(self.ckpt_path)['iteration']}"
            except PretrainError:
                saved = "unreadable"
            state = f"the last checkpoint {self.ckpt_path} ({saved}) is left intact; rerun to resume from it"
        return f"loss is {loss_value} at iteration {self.iteration} (epoch {epoch}); stopping. {cause}. {state}"

    def iteration_record(self, epoch, loss, diagnostics, images_per_s):
        it = self.iteration - 1
        return {"epoch": epoch, "iteration": self.iteration, "loss": loss, "loss_norm": loss / self.ln_k,
                **diagnostics, "prototypes_in_use": math.exp(diagnostics["batch_entropy"]),
                "lr": float(self.sched["lr"][it]), "wd": float(self.sched["wd"][it]),
                "momentum": float(self.sched["momentum"][it]), "teacher_temp": float(self.sched["teacher_temp"][it]),
                "student_temp": self.t["student_temp"], "images_per_s": images_per_s,
                "mfu": images_per_s / self.world * self.flops_img / self.peak, **self.loss_terms}

    def check_collapse(self, record, warned):
        """Name a collapse in the record (after the first epoch: a fresh network starts flat) and say it once
        per epoch and kind."""
        if self.iteration <= self.ipe:
            return
        found = collapse.warnings(record, self.ln_k)
        if found:
            record["warning"] = found
        for kind in set(found) - warned:
            warned.add(kind)
            self.say(f"warning: iteration {self.iteration}: {collapse.MESSAGES[kind]}")

    # ---- one epoch
    def run_epoch(self, epoch, bar):
        t, start = self.t, time.perf_counter()
        curation = None
        if self.indices is None:
            self.indices, self.pruner_state, curation = epoch_indices(epoch, self.dataset, self.cfg, self.pruner_state,
                                                                      self.teacher.backbone, self.device)
            if curation and self.main:
                tqdm.write(f"epoch {epoch}: {prune.curation_line(curation)}")
        elif self.pruner_state.get("epoch") == epoch:  # resumed inside a curated epoch: log its curation again
            curation = self.pruner_state.get("info")
        curation_s = time.perf_counter() - start
        batches = rank_batches(self.indices, epoch, t["seed"], self.ipe, t["batch_size_per_gpu"], self.rank, self.world)
        end = min(self.stop_at, (epoch + 1) * self.ipe)
        loader = Prefetcher(self.dataset, batches, self.iteration - epoch * self.ipe, t["prefetch"],
                            pin=self.device.type == "cuda")
        losses, window_start, window_images, warned = [], time.perf_counter(), 0, set()
        try:
            while self.iteration < end:
                x = loader.next().to(self.device, non_blocking=True)
                loss, diagnostics = self.step(x, epoch)
                losses.append(loss)
                window_images += len(x) * self.world
                bar.update(1)
                if self.iteration % t["log_every"] == 0 or self.iteration == end:
                    record = self.iteration_record(epoch, loss, diagnostics,
                                                   window_images / (time.perf_counter() - window_start))
                    self.check_collapse(record, warned)
                    self.log.write(**record)
                    bar.set_postfix(loss=f"{loss:.3f}", H=f"{diagnostics['teacher_entropy']:.2f}",
                                    protos=f"{record['prototypes_in_use']:.0f}",
                                    fstd=f"{diagnostics['feature_std']:.2f}", img_s=f"{record['images_per_s']:.1f}")
                    window_start, window_images = time.perf_counter(), 0
                if t["checkpoint_iters"] and self.iteration % t["checkpoint_iters"] == 0 and self.iteration < end:
                    self.save(epoch)
                    if self.main:
                        curves.draw_run(self.out)
        finally:
            loader.close()
        complete = self.iteration == (epoch + 1) * self.ipe
        self.save(epoch, snapshot=complete and (epoch + 1) % t["checkpoint_every"] == 0)
        norm = np.asarray(losses) / self.ln_k
        record = {"event": "epoch", "epoch": epoch, "iteration": self.iteration, "complete": complete,
                  "loss": float(np.mean(losses)), "loss_norm": float(norm.mean()), "subset": len(self.indices),
                  "epoch_s": time.perf_counter() - start, "curation_s": curation_s}
        if curation:
            record["curation"] = curation
        if complete and np.all(np.abs(norm - 1) < 0.01):
            record["warning"] = "collapse"
            if self.main:
                tqdm.write(f"warning: epoch {epoch}: the loss stayed within 1% of ln(out_dim) = {self.ln_k:.3f} all "
                           f"epoch: the teacher and student outputs look collapsed to uniform", file=sys.stderr)
        last = self.iteration == self.stop_at  # a run cut by train.max_iters still gets its final evaluation
        if t["eval_every"] and (complete and (epoch + 1) % t["eval_every"] == 0 or last) and self.main:
            result = periodic_eval(self.teacher.backbone, self.cfg, self.device)
            if result is not None:
                record["knn"] = result
        self.log.write(**record)
        if self.main:                  # the epoch's checkpoint is saved and its record logged: redraw the run
            curves.draw_run(self.out)
        if complete:
            self.indices = None
        if dist.is_initialized():
            dist.barrier()  # rank 0 may have evaluated: keep the ranks in step

    def fit(self):
        """Train from the current iteration to the end (or train.max_iters); export the teacher backbone."""
        bar = tqdm(total=self.stop_at, initial=self.iteration, disable=not self.main, dynamic_ncols=True,
                   mininterval=1.0)
        if self.iteration == 0 and self.t["eval_every"] and self.main:  # the curve's starting point: the init
            result = periodic_eval(self.teacher.backbone, self.cfg, self.device)
            if result is not None:
                self.log.write(event="eval", epoch=-1, iteration=0, knn=result)
        try:
            while self.iteration < self.stop_at:
                self.run_epoch(self.iteration // self.ipe, bar)
        finally:
            bar.close()
        if self.main:
            self.log.write(event="done", iteration=self.iteration, **curation_share(self.log.path))
            backbone = {k: v.detach().cpu() for k, v in self.teacher.backbone.state_dict().items()}
            atomic_save(backbone, os.path.join(self.out, "backbone.pt"))
            self.say(f"done at iteration {self.iteration}; teacher backbone in {os.path.join(self.out, 'backbone.pt')}")


PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "connection closed")


def train(cfg):
    """Run (or resume) pretraining; returns {"student", "teacher" (unwrapped), "iteration", "out",
    "pruner_state"}."""
    trainer = Trainer(cfg)
    trainer.fit()
    return {"student": trainer.student, "teacher": trainer.teacher, "iteration": trainer.iteration,
            "out": trainer.out, "pruner_state": trainer.pruner_state}


def run(argv):
    cfg = config.load_or_exit(argv, stage="train")
    t = cfg["train"]
    config.check_inputs(cfg, {"train.data": "dataset", "train.eval_data": "dataset"} if t["eval_every"] else
                        {"train.data": "dataset"})
    if int(os.environ.get("RANK", 0)) == 0:
        config.check_writable(t["out"], "train.out")
        config.show(cfg, ["model", "train", "aug", "prune"])
    try:
        return train(cfg)
    except RuntimeError as e:  # gloo's words when another process of the group died
        if not (dist.is_initialized() and any(words in str(e) for words in PEER_LOST)):
            raise
        raise PretrainError(f"rank {dist.get_rank()} of {dist.get_world_size()}: lost contact with another process "
                            f"of the group ({str(e).splitlines()[0][:160]}); a peer rank died or was killed, its "
                            f"own output says why; rerun to resume from the last checkpoint") from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main():
    with config.user_errors():  # bad input or state: one line; a bug keeps its traceback
        run(sys.argv[1:])


if __name__ == "__main__":
    main()
