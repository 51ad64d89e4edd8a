"""Stage 2: DINO self-supervised pretraining on prepared SAR shards, on the subset the pruner picks each epoch.

Reads   <train.data>/  (a prepared dataset; images are memory-mapped, never loaded whole)
Writes  <train.out>/config.yaml          the resolved config
        <train.out>/checkpoint.pt        rolling full state (atomic), at every epoch end and every
                                         train.checkpoint_iters iterations; a snapshot checkpoint_e<NNNN>.pt
                                         after every train.checkpoint_every completed epochs
        <train.out>/log.jsonl            one record per train.log_every iterations, per epoch and per event
        <train.out>/curves.png           the run drawn from log.jsonl at every snapshot and at the end (curves.py)
        <train.out>/curation_e<NNNN>.png the kept set of a curation, by cluster (prune.py; at most 4 per run)
        <train.out>/backbone.pt          the teacher backbone's state dict alone (plain load_state_dict works)

Commands (one code path; the process group comes from the torchrun environment when WORLD_SIZE > 1):
    python pretrain.py configs/demo.yaml train.device=cpu train.epochs=1      # CPU smoke
    python pretrain.py configs/oceansar1.yaml                                   # one GPU
    torchrun --nproc_per_node=8 pretrain.py configs/oceansar1.yaml              # one node, 8 GPUs
    torchrun --nnodes=4 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_id=oceansar1 \\
             --rdzv_endpoint=<host0>:29500 pretrain.py configs/oceansar1.yaml  # 4 nodes (run on each node)
A run resumes from <out>/checkpoint.pt (train.resume=false starts over). Exit codes: 0 done, 1 bad input or
state (one line: a corrupt shard, an unreadable checkpoint, a full disk, a lost peer), 2 bad config (checked
before any work), 3 non-finite loss. --verify hashes every shard first (each is hashed anyway when first read).

checkpoint.pt holds checkpoint.training_state: student, teacher, dino_loss, optimizer, epoch, iteration,
iters_per_epoch, global_batch, rng, config, pruner (prune.Pruner's state) and indices (the epoch's subset);
torch.load(path, weights_only=True) reads it and weights.load_backbone_weights takes its teacher backbone.

The loop, top to bottom: process group and output; dataset; student, teacher, loss, optimiser and schedules
(oceansar/dino.py, dinov2.py); resume; then per epoch the pruner's subset, dealt to the ranks, and one DINO step
per batch: augment (a (seed, epoch, iteration, rank) generator), teacher on the two globals, student on every
crop, loss, backward, per-parameter clipping, AdamW, EMA. One epoch is ceil(ceil(rho N) / global batch)
iterations in every pruning mode (oceansar/epochs.py).
"""

import os

# Before torch loads OpenMP: idle threads that spin slow a small shared CPU several-fold; the user's policy wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import math
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

import prune
from oceansar import checkpoint, collapse, config, curves, dino, dinov2, distributed, errors, loader, mfu, probes
from oceansar import runlog, shards, streams
from oceansar.augment import SARAugment
from oceansar.epochs import iters_per_epoch
from oceansar.backbone import count_params


class NonFiniteLoss(errors.UserError):
    code = errors.EXIT_NON_FINITE  # the loss became NaN/inf: exit code 3


class Trainer:
    """One pretraining run: fit() trains from wherever the run stands to the end and exports the teacher."""

    def __init__(self, cfg):
        self.cfg, self.t = cfg, cfg["train"]
        self.setup()
        self.open_data()
        self.build_model()
        self.restore()
        self.wrap_for_speed()

    # ---------------------------------------------------------------------------------------------- setup
    def setup(self):
        """The process group, the device and the output folder (rank 0 writes)."""
        self.rank, self.world, self.device = distributed.setup(self.t["device"])
        self.main = self.rank == 0
        if self.device.type == "cuda":  # TF32 matmuls: the paper recipe's precision on Ampere and later
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.out, self.ckpt_path = self.t["out"], os.path.join(self.t["out"], "checkpoint.pt")
        if self.main:
            os.makedirs(self.out, exist_ok=True)
            config.save(self.cfg, self.out)

    def open_data(self):
        """The archive, the epoch length and schedules, and the in-training kNN's labelled set."""
        t, e = self.t, self.cfg["eval"]
        self.dataset = shards.ShardDataset(t["data"], verify=t["verify"])
        if warning := shards.near_constant_warning(self.dataset):
            self.say(f"warning: train.data {warning}", sys.stderr)
        self.global_batch = t["batch_size_per_gpu"] * self.world
        self.ipe = iters_per_epoch(self.cfg["prune"]["rho"], len(self.dataset), self.global_batch)
        self.total_iters = t["epochs"] * self.ipe
        self.stop_at = min(self.total_iters, t["max_iters"] or self.total_iters)
        self.sched = dino.build_schedules(t, self.ipe, self.global_batch)
        self.knn = None  # the in-training kNN on rank 0, every train.eval_every epochs
        if t["eval_every"] and t["eval_data"] and self.main:
            self.knn = probes.KnnMonitor(t["eval_data"], e["knn_k"], e["knn_temperature"], e["split_seed"],
                                         e["batch_size"])

    def build_model(self):
        """Student and teacher (identical initial weights), the loss with its centre, AdamW, the augmentations."""
        t = self.t
        self.student, self.teacher = dino.build_student_teacher(self.cfg, self.device)
        if self.device.type == "cuda" and self.world > 1:  # ResNet: batch statistics over all GPUs
            self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)
            self.teacher = nn.SyncBatchNorm.convert_sync_batchnorm(self.teacher)
        self.optimizer = torch.optim.AdamW(dino.param_groups(self.student))
        self.v2, self.dino_loss = t["objective"] == "dinov2", dino.build_loss(self.cfg, self.device)
        self.augment = SARAugment(self.cfg, self.dataset.std)
        self.drop_path_gen = torch.Generator(self.device)
        self.student.backbone.set_drop_path_generator(self.drop_path_gen)
        self.pruner = prune.Pruner(self.cfg)
        self.iteration, self.indices, self.loss_terms = 0, None, {}
        self.ln_k = math.log(self.cfg["model"]["out_dim"])

    def restore(self):
        """Resume from checkpoint.pt when there is one (and train.resume), then open the log."""
        resumed = self.t["resume"] and os.path.exists(self.ckpt_path)
        if resumed:
            ck = checkpoint.load(self.ckpt_path)
            self.iteration = checkpoint.restore_training(ck, self.ckpt_path, self.modules(), self.optimizer,
                                                         self.pruner, self.ipe, self.global_batch)
            if self.iteration // self.ipe == ck["epoch"]:  # stopped inside an epoch: finish it on the same subset
                self.indices = ck["indices"].numpy()
        self.log = runlog.RunLog(os.path.join(self.out, "log.jsonl"), self.main, fresh=not resumed)
        if resumed:
            epoch = self.iteration // self.ipe
            self.log.write(event="resumed", iteration=self.iteration, epoch=epoch)
            self.say(f"resuming from {self.ckpt_path} at iteration {self.iteration} (epoch {epoch})")

    def wrap_for_speed(self):
        """DDP over the ranks and torch.compile when asked; the unwrapped modules stay what is saved."""
        self.student_fwd, self.teacher_fwd = self.student, self.teacher
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.student_fwd = nn.parallel.DistributedDataParallel(self.student, device_ids=ids)
        if self.t["compile"]:
            self.student_fwd, self.teacher_fwd = torch.compile(self.student_fwd), torch.compile(self.teacher)
        self.s_params, self.t_params = list(self.student.parameters()), list(self.teacher.parameters())
        self.trainable = [p for p in self.s_params if p.requires_grad]
        self.last_layer = [p for n, p in self.student.named_parameters() if "last_layer" in n.split(".")]
        self.flops_img = mfu.train_flops_per_image(self.student.backbone, self.student.head, self.t)
        params = count_params(self.student.backbone) / 1e6
        self.say(f"{len(self.dataset)} images, {self.ipe} iterations/epoch of {self.global_batch} ({self.world} x "
                 f"{self.t['batch_size_per_gpu']}), {self.total_iters} iterations; {params:.1f}M backbone parameters, "
                 f"{self.flops_img / 1e9:.2f} GFLOP per image and step, on {self.device}")

    def say(self, message, file=None):  # rank 0 speaks; warnings go to stderr
        if self.main:
            tqdm.write(message, file=file)

    # ---------------------------------------------------------------------------------------------- state
    def modules(self):
        return {"student": self.student, "teacher": self.teacher, "dino_loss": self.dino_loss}

    def save(self, epoch, snapshot=False):
        """Rank 0 writes the full state to <out>/checkpoint.pt (atomically); a snapshot is a hard link to it."""
        if self.main:
            checkpoint.save(checkpoint.training_state(self.modules(), self.optimizer, config.as_json(self.cfg),
                                                      self.pruner, epoch, self.iteration, self.ipe, self.global_batch,
                                                      self.indices), self.ckpt_path)
            if snapshot:
                checkpoint.save_snapshot(self.ckpt_path, os.path.join(self.out, f"checkpoint_e{epoch + 1:04d}.pt"))

    # ---------------------------------------------------------------------------------------------- one step
    def step(self, x, epoch):
        """One DINO (or DINOv2) update on this rank's raw batch; returns the DINO loss and the collapse
        diagnostics, averaged over ranks (dinov2's other terms go to self.loss_terms)."""
        it, t = self.iteration, self.t
        crops = self.augment(x, torch.Generator(self.device).manual_seed(
            streams.seed(t["seed"], epoch, it, self.rank, streams.AUGMENT)))
        self.drop_path_gen.manual_seed(streams.seed(t["seed"], it, self.rank, streams.DROP_PATH))
        dino.set_schedule(self.optimizer, self.sched, it)
        loss, stats, names = self.losses(crops, self.masks(epoch, it, 2 * len(x)) if self.v2 else (), it)
        loss_value, entropy, batch_entropy, feature_std, *values = distributed.all_reduce_mean(stats.float()).tolist()
        self.loss_terms = dict(zip(names, values), **({"loss_total": loss_value} if self.v2 else {}))
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(self.non_finite_message(x, loss_value, epoch))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dino.clip_gradients(self.trainable, t["clip_grad"])
        if epoch < t["freeze_last_layer"]:
            for p in self.last_layer:
                p.grad = None
        self.optimizer.step()
        dino.ema_update(self.t_params, self.s_params, float(self.sched["momentum"][it]))
        self.iteration += 1
        # KL(q || p) averaged over the view pairs = cross-entropy - H(q): every teacher view meets as many students
        dino_value = self.loss_terms.get("loss_dino", loss_value)
        return dino_value, {"teacher_entropy": entropy, "batch_entropy": batch_entropy,
                            "kl_teacher_student": dino_value - entropy, "feature_std": feature_std}

    def masks(self, epoch, it, n):
        """dinov2: [n, patches] block masks of the global crops from a (seed, epoch, iteration, rank) generator."""
        t, grid = self.t, self.t["global_crops_size"] // self.cfg["model"]["patch_size"]
        rng = np.random.default_rng(streams.seed(t["seed"], epoch, it, self.rank, streams.MASK))
        return (dinov2.sample_masks(n, (grid, grid), t["mask_probability"], t["mask_ratio"], rng).to(self.device),)

    def losses(self, crops, masks, it):
        """Teacher on the globals, student on every crop (bf16 autocast on CUDA); the losses in fp32. Returns the
        loss to back-propagate, [loss, H(q), H(q̄), feature spread, dinov2 terms...] for the log, and the names
        of the dinov2 terms."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            with torch.no_grad():
                t_out, t_feats = self.teacher_fwd(crops[:2], *masks, return_backbone_features=True)
            s_out = self.student_fwd(crops, *masks)
        temp, ibot_temp = float(self.sched["teacher_temp"][it]), float(self.sched["ibot_teacher_temp"][it])
        if self.v2:
            loss, entropies, terms = self.dino_loss(s_out, t_out, *masks, temp, ibot_temp)
        else:
            (loss, entropies), terms = self.dino_loss(s_out, t_out, temp), {}
        stats = torch.cat([loss.detach()[None], entropies, collapse.feature_spread(t_feats)[None],
                           *[v[None] for v in terms.values()]])
        return loss, stats, list(terms)

    def non_finite_message(self, x, loss_value, epoch):
        """What caused a NaN/inf loss (the data or the optimisation) and what is on disk to resume from."""
        bad = int((~torch.isfinite(x)).sum())
        cause = (f"the input batch holds {bad} non-finite pixel(s): {self.t['data']} is damaged (check it with "
                 f"--verify, or prepare it again)" if bad else
                 "the input batch is finite: lower train.lr or raise train.warmup_epochs")
        state = f"no checkpoint was written yet in {self.out}; a rerun starts over"
        if os.path.exists(self.ckpt_path):
            try:
                saved = f"iteration {checkpoint.load(self.ckpt_path)['iteration']}"
            except checkpoint.CheckpointError:
                saved = "unreadable"
            state = f"the last checkpoint {self.ckpt_path} ({saved}) is left intact; rerun to resume from it"
        return f"loss is {loss_value} at iteration {self.iteration} (epoch {epoch}); stopping. {cause}. {state}"

    # ---------------------------------------------------------------------------------------------- logging
    def log_step(self, epoch, loss, diagnostics, images_per_s, bar, warned):
        """One log.jsonl record, the progress bar, and a named collapse warning (after the first epoch: a fresh
        network starts flat), said once per epoch and kind."""
        it = self.iteration - 1
        record = {"epoch": epoch, "iteration": self.iteration, "loss": loss, "loss_norm": loss / self.ln_k,
                  **diagnostics, "prototypes_in_use": math.exp(diagnostics["batch_entropy"]),
                  **{key: float(self.sched[key][it]) for key in ("lr", "wd", "momentum", "teacher_temp")},
                  "student_temp": self.t["student_temp"], "images_per_s": images_per_s,
                  "mfu": images_per_s / self.world * self.flops_img / mfu.peak_flops(self.device), **self.loss_terms}
        found = collapse.warnings(record, self.ln_k) if self.iteration > self.ipe else []
        if found:
            record["warning"] = found
        for kind in set(found) - warned:
            warned.add(kind)
            self.say(f"warning: iteration {self.iteration}: {collapse.MESSAGES[kind]}", sys.stderr)
        self.log.write(**record)
        bar.set_postfix(loss=f"{loss:.3f}", H=f"{diagnostics['teacher_entropy']:.2f}",
                        protos=f"{record['prototypes_in_use']:.0f}", fstd=f"{diagnostics['feature_std']:.2f}",
                        img_s=f"{images_per_s:.1f}")

    # ---------------------------------------------------------------------------------------------- one epoch
    def run_epoch(self, epoch, bar):
        start, curation = time.perf_counter(), self.pruner.curation_info(epoch)
        if self.indices is None:  # else: resumed inside this epoch, on its saved subset
            self.indices, curation = self.pruner.indices(epoch, self.teacher.backbone, self.dataset)
            if curation:
                self.say(f"epoch {epoch}: {prune.curation_line(curation)}")
        curation_s = time.perf_counter() - start
        losses = self.train_iterations(epoch, bar)
        complete = self.iteration == (epoch + 1) * self.ipe
        snapshot = complete and (epoch + 1) % self.t["checkpoint_every"] == 0
        self.save(epoch, snapshot=snapshot)
        norm = np.asarray(losses) / self.ln_k
        record = {"event": "epoch", "epoch": epoch, "iteration": self.iteration, "complete": complete,
                  "loss": float(np.mean(losses)), "loss_norm": float(norm.mean()), "subset": len(self.indices),
                  "epoch_s": time.perf_counter() - start, "curation_s": curation_s,
                  **({"curation": curation} if curation else {})}
        if complete and np.all(np.abs(norm - 1) < 0.01):
            record["warning"] = "collapse"
            self.say(f"warning: epoch {epoch}: the loss stayed within 1% of ln(out_dim) = {self.ln_k:.3f} all epoch: "
                     f"the teacher and student outputs look collapsed to uniform", sys.stderr)
        last = self.iteration == self.stop_at  # a run cut by train.max_iters still gets its final evaluation
        if self.knn is not None and (complete and (epoch + 1) % self.t["eval_every"] == 0 or last):
            record["knn"] = self.knn(self.teacher.backbone, self.device)
        self.log.write(**record)
        if self.main and (snapshot or last):  # its record is logged: redraw the run (~2 s, not every epoch)
            curves.draw_run(self.out)
        if complete:
            self.indices = None
        distributed.barrier()  # rank 0 may have evaluated: keep the ranks in step

    def train_iterations(self, epoch, bar):
        """The epoch's remaining steps on this rank's batches, read ahead in a thread; returns their losses."""
        t, end = self.t, min(self.stop_at, (epoch + 1) * self.ipe)
        batches = loader.rank_batches(self.indices, epoch, t["seed"], self.ipe, t["batch_size_per_gpu"], self.rank,
                                      self.world)
        reader = loader.Prefetcher(self.dataset, batches, self.iteration - epoch * self.ipe, t["prefetch"],
                                   pin=self.device.type == "cuda")
        losses, window_start, window_images, warned = [], time.perf_counter(), 0, set()
        try:
            while self.iteration < end:
                x = reader.next().to(self.device, non_blocking=True)
                loss, diagnostics = self.step(x, epoch)
                losses.append(loss)
                window_images += len(x) * self.world
                bar.update(1)
                if self.iteration % t["log_every"] == 0 or self.iteration == end:
                    images_per_s = window_images / (time.perf_counter() - window_start)
                    self.log_step(epoch, loss, diagnostics, images_per_s, bar, warned)
                    window_start, window_images = time.perf_counter(), 0
                if t["checkpoint_iters"] and self.iteration % t["checkpoint_iters"] == 0 and self.iteration < end:
                    self.save(epoch)
                    if self.main:
                        curves.draw_run(self.out)
        finally:
            reader.close()
        return losses

    # ---------------------------------------------------------------------------------------------- the run
    def fit(self):
        """Train from the current iteration to the end (or train.max_iters); export the teacher backbone."""
        bar = tqdm(total=self.stop_at, initial=self.iteration, disable=not self.main, dynamic_ncols=True,
                   mininterval=1.0)
        if self.iteration == 0 and self.knn is not None:  # the curve's starting point: the initialisation
            self.log.write(event="eval", epoch=-1, iteration=0, knn=self.knn(self.teacher.backbone, self.device))
        try:
            while self.iteration < self.stop_at:
                self.run_epoch(self.iteration // self.ipe, bar)
        finally:
            bar.close()
        if self.main:
            self.log.write(event="done", iteration=self.iteration, **runlog.curation_share(runlog.read(self.log.path)))
            backbone = {k: v.detach().cpu() for k, v in self.teacher.backbone.state_dict().items()}
            checkpoint.save(backbone, os.path.join(self.out, "backbone.pt"))
            self.say(f"done at iteration {self.iteration}; teacher backbone in {os.path.join(self.out, 'backbone.pt')}")
        return self


def run(argv):
    """Pretrain (or resume) with the config of argv; returns the finished Trainer."""
    cfg = config.load(argv, stage="train")
    t = cfg["train"]
    config.check_inputs(cfg, {"train.data": "dataset", **({"train.eval_data": "dataset"} if t["eval_every"] else {})})
    if int(os.environ.get("RANK", 0)) == 0:
        config.check_writable(t["out"], "train.out")
        config.show(cfg, ["model", "train", "aug", "prune"])
    try:
        return Trainer(cfg).fit()
    except RuntimeError as e:
        peer = distributed.lost_peer(e)
        if peer is None:
            raise
        raise peer from None
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    errors.main(run)
