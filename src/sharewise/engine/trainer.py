"""The training loop: runs a method's phases as data, with checkpoints that resume exactly.

Every step's randomness comes from state the checkpoint holds: the data order is a function of
(seed, cycle, stretch, pass) and the position inside it, method noise is seeded by step, and the
global generators (dropout) are saved. A run killed after its first checkpoint and resumed ends
with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.base import prefetch
from ..errors import RunDirError, TrainingError
from ..methods.base import MultiTaskModel, Phase, PhaseState, Stretch
from ..metrics import higher_is_better
from ..seeding import global_rng_state, order_key, round_order, set_global_rng_state
from ..tasks import compute_losses
from . import distributed as D
from .checkpoint import load_checkpoint, save_checkpoint
from .evaluate import evaluate, forward_batch, to_device
from .logging import MetricsLogger
from .optim import build_optimizer, build_scheduler
from .progress import PhaseProgress
from .selection import reference_metrics, selection_score  # noqa: F401  (reference_metrics: re-exported)


def _all_finite(value: torch.Tensor) -> bool:
    """Finite on every rank (a collective, so that all ranks stop together)."""
    flag = torch.tensor([0.0 if torch.isfinite(value).all() else 1.0], device=value.device)
    if D.is_distributed():
        torch.distributed.all_reduce(flag)
    return flag.item() == 0.0


def _average_gradients(params: list[nn.Parameter]) -> None:
    """Mean of every rank's gradient, in one flat all-reduce: a rank without a gradient for a
    parameter counts as zero, and a parameter no rank has one for keeps none (the optimiser skips
    it, as with one process). Each parameter's presence flag rides at the end of the buffer."""
    live = [p for p in params if p.requires_grad]
    if not live:
        return
    grads = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in live]
    present = torch.tensor([p.grad is not None for p in live], dtype=grads[0].dtype, device=grads[0].device)
    flat = torch.cat([*grads, present])
    D.all_reduce_mean(flat)
    anywhere = (flat[-len(live):] > 0).tolist()  # one sync for every flag
    offset = 0
    for p, has_grad in zip(live, anywhere):
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone() if has_grad else None
        offset += n


# how a monitored split's rows are labelled in metrics.jsonl: not "train", the training losses' label;
# test rows are a diagnostic, never the test
MONITOR_LABELS = {"train": "train_eval", "test": "test_diagnostic"}


class Interrupted(Exception):
    """Ctrl-C during training: a checkpoint was saved; ``resume_hint`` says how to continue."""

    exit_code = 130


class Trainer:
    """Runs phases on one model and one dataset; owns optimisers, checkpoints and logging."""

    def __init__(self, model: MultiTaskModel, data: Any, *, run_dir: Path, seed: int, batch_size: int,
                 eval_batch_size: int, device: torch.device, logger: MetricsLogger,
                 checkpoint_every_s: float = 120.0, progress: bool = True,
                 reference: dict[str, dict[str, float]] | None = None, log_every: int = 20,
                 precision: str = "fp32", workers: int = 0, selection_metric: str = "objective",
                 label: str | None = None) -> None:
        self.model = model
        self.data = data
        self.tasks = list(data.tasks)
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.device = device
        self.logger = logger
        self.checkpoint_every_s = checkpoint_every_s
        self.progress = progress and D.is_main()
        self.reference = reference
        self.log_every = log_every
        self.precision = precision
        self.workers = workers
        self.selection_metric = selection_metric
        self.label = label  # shown before the phase's name in the progress (a candidate's directory)
        self._progress: PhaseProgress | None = None
        self._stop = False
        self._ownership: dict[str, tuple[set[int], list[nn.Parameter]]] = {}
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.ddp = None
        if D.is_distributed():
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
            self._ddp_params = {id(p) for p in model.parameters() if p.requires_grad}  # DDP expects all of them

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    # ------------------------------------------------------------------ checkpoints

    def ckpt_path(self, phase: str, name: str) -> Path:
        return self.run_dir / "checkpoints" / phase / f"{name}.pt"

    def _save(self, path: Path, phase: Phase, state: PhaseState, optimizers, schedulers, *, model_state=None) -> None:
        if not D.is_main():
            return
        save_checkpoint(path, {
            "model": model_state if model_state is not None else self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in schedulers.items() if s is not None},
            "state": dataclasses.asdict(state),
            "phase": phase.name,
            "rng": global_rng_state(),
            "scaler": self.scaler.state_dict() if self.scaler else {},
            "saved_at": time.time(),  # rows of metrics.jsonl logged after it are dropped on resume
        })

    def _kept_checkpoint(self, phase: Phase) -> str:
        """The end of a non-finite stop's message: the checkpoint kept, when one was written."""
        last = self.ckpt_path(phase.name, "last")
        if last.is_file():
            return f"the last good checkpoint is kept: {last}"
        return f"no checkpoint was written yet in {last.parent}: lower optim.lr or check the data"

    # ------------------------------------------------------------------ one phase

    def run_phase(self, phase: Phase, *, resume: bool = False) -> dict[str, Any]:
        last_path, best_path = self.ckpt_path(phase.name, "last"), self.ckpt_path(phase.name, "best")
        state = PhaseState()
        # each group stepped as one flat buffer (exact for any method: a parameter without a gradient
        # is not stepped); not under DDP, whose gradient buckets own the gradients, nor in a
        # round-robin loop, where most steps leave some task's parameters without a gradient
        flat = phase.loop == "joint" and not D.is_distributed()
        optimizers = {k: build_optimizer(spec, self.model.param_groups(), flat=flat)
                      for k, spec in phase.optimizers.items()}
        self._ownership = {k: self._owned(o) for k, o in optimizers.items()}
        steps_per_cycle = sum(self._stretch_len(s, phase) for s in phase.stretches)
        total = min(phase.cycles * steps_per_cycle, phase.max_steps or math.inf)
        schedulers = {k: build_scheduler(spec, optimizers[k], int(total)) for k, spec in phase.optimizers.items()}
        best_model_state: dict[str, torch.Tensor] | None = None

        if resume and last_path.exists():
            ck = load_checkpoint(last_path)
            self.model.load_state_dict(ck["model"])
            for k, o in optimizers.items():
                try:
                    o.load_state_dict(ck["optimizers"][k])
                except (KeyError, ValueError) as err:
                    raise RunDirError(f"{last_path}: its optimiser state ({k!r}) does not fit this phase's optimiser "
                                      f"(written by another sharewise version?); start the run again with "
                                      f"--overwrite") from err
            for k, s in schedulers.items():
                if s is not None:
                    s.load_state_dict(ck["schedulers"][k])
            state = PhaseState(**ck["state"])
            if self.scaler and ck.get("scaler"):
                self.scaler.load_state_dict(ck["scaler"])
            set_global_rng_state(ck["rng"])
            if best_path.exists():
                best_model_state = load_checkpoint(best_path)["model"]
            print(f"sharewise: resumed phase {phase.name!r} from {last_path} "
                  f"(cycle {state.cycle}, step {state.step})", file=sys.stderr)
            # the rows logged after this checkpoint are logged again from here: no (phase, step, split) twice
            self.logger.drop_after(phase.name, state.step, since=ck.get("saved_at", last_path.stat().st_mtime))
            self.logger.log(phase.name, state.step, {}, event="resumed", checkpoint=str(last_path))
            if state.done:
                self._finish(phase, best_model_state)
                return self._summary(phase, state)
        else:
            if phase.init_from:
                self.model.load_state_dict(load_checkpoint(self.run_dir / "checkpoints" / f"{phase.init_from}.pt")["model"])
            if phase.save_init and D.is_main():
                save_checkpoint(self.run_dir / "checkpoints" / "init.pt", {"model": self.model.state_dict()})
            D.barrier()

        old_handler = signal.getsignal(signal.SIGINT)
        if D.is_main():
            signal.signal(signal.SIGINT, self._request_stop)
        try:
            best_model_state = self._loop(phase, state, optimizers, schedulers, best_model_state, last_path, best_path)
        finally:
            signal.signal(signal.SIGINT, old_handler)
        state.done = True
        self._warn_first_evaluation(phase, state)
        self._finish(phase, best_model_state)
        self._save(last_path, phase, state, optimizers, schedulers)
        D.barrier()  # rank 0's checkpoints are on disk before any rank reads them
        return self._summary(phase, state)

    def _request_stop(self, *_: Any) -> None:
        self._stop = True

    def _stretch_len(self, stretch: Stretch, phase: Phase | None = None) -> int:
        """``iters``, or one pass over the split: its batches, times the tasks in a round-robin loop
        (where a step is one task's update)."""
        per_pass = max(1, self.data.num_batches(stretch.split, self.batch_size, world_size=D.world_size()))
        if phase is not None and phase.loop == "round_robin":
            per_pass *= len(self.tasks)
        return stretch.iters or per_pass

    def round_robin_batches(self, split: str, start: int):
        """The batches of a round-robin loop from update ``start`` on (parameter allocation §5).

        Update s is position ``s mod T`` of round ``⌊s / T⌋``, whose task order is a fresh seeded
        permutation (:func:`~sharewise.seeding.round_order`); the task visited draws its batch
        number ``⌊s / T⌋`` (every task is visited once a round) from its own stream
        (``data.task_batch``: reshuffled every epoch, last batch kept), and only that batch is
        built. Everything is a function of s, so a run resumed mid-round continues exactly."""
        names = [t.name for t in self.tasks]

        def build(step: int):
            round_, position = divmod(step, len(names))
            task = names[round_order(self.seed, round_, len(names))[position]]
            return self.data.task_batch(split, task, round_, self.batch_size, seed=self.seed, rank=D.rank(),
                                        world_size=D.world_size(), augment=True)

        return prefetch(build, itertools.count(start), self.workers)

    def _loop(self, phase, state, optimizers, schedulers, best_model_state, last_path, best_path):
        self.model.train()
        last_save, saved_step = time.monotonic(), state.step
        # a cycle end saves once an epoch's worth of steps has passed since the last cycle-end save
        # (every cycle where a cycle is an epoch; AdaShare's search cycles are a few steps each, and
        # a save every cycle was a tenth of the demo's search); timed saves bound what a kill loses
        epoch_steps = max(max(1, self.data.num_batches(s.split, self.batch_size, world_size=D.world_size()))
                          for s in phase.stretches)
        bar = self._progress = self._bar(phase, state)
        try:
            best_model_state = self._cycles(phase, state, optimizers, schedulers, best_model_state, last_path, best_path,
                                            epoch_steps, last_save, saved_step)
        except BaseException:
            if bar is not None:
                bar.abandon()
            raise
        finally:
            self._progress = None
        if bar is not None:
            bar.close("stopped early" if phase.patience is not None and state.bad_evals >= phase.patience else "")
        return best_model_state

    def _cycles(self, phase, state, optimizers, schedulers, best_model_state, last_path, best_path, epoch_steps,
                last_save, saved_step):
        bar = self._progress
        running: dict[str, list[float]] = {}
        while state.cycle < phase.cycles and not self._stopped(phase, state):
            while state.stretch < len(phase.stretches):
                stretch = phase.stretches[state.stretch]
                n_batches = max(1, self.data.num_batches(stretch.split, self.batch_size, world_size=D.world_size()))
                length = self._stretch_len(stretch, phase)
                while state.stretch_step < length and not self._stopped(phase, state):
                    if phase.loop == "round_robin":
                        batches = self.round_robin_batches(stretch.split, state.step)
                    else:
                        rep, pos = divmod(state.stretch_step, n_batches)
                        # distinct for every (cycle, stretch, repetition); the historical number below 64
                        # stretches and 4,096 repetitions
                        epoch_key = order_key((state.cycle, state.stretch, rep), (64, 4096))
                        batches = self.data.batches(stretch.split, self.batch_size, shuffle=True, seed=self.seed,
                                                    epoch=epoch_key, start=pos, rank=D.rank(),
                                                    world_size=D.world_size(), augment=True, workers=self.workers)
                    for batch in batches:
                        if self._stop:
                            self._save(last_path, phase, state, optimizers, schedulers)
                            raise Interrupted(f"interrupted; checkpoint saved to {last_path}")
                        losses = self._step(phase, stretch, state, optimizers, schedulers, batch)
                        for k, v in losses.items():
                            running.setdefault(k, []).append(v)
                        if bar is not None:
                            bar.update(1, losses.get("loss/total"))
                        if state.step % self.log_every == 0:
                            self._log_running(phase, state, running, optimizers)
                            running = {}
                        if phase.eval_every and state.step % phase.eval_every == 0:
                            best_model_state = self._select(phase, state, best_model_state, best_path, optimizers, schedulers)
                        if time.monotonic() - last_save > self.checkpoint_every_s:
                            self._save(last_path, phase, state, optimizers, schedulers)
                            last_save = time.monotonic()
                        if state.stretch_step >= length or self._stopped(phase, state):
                            break
                if self._stopped(phase, state) and state.stretch_step < length:
                    break
                state.stretch += 1
                state.stretch_step = 0
            if state.stretch < len(phase.stretches):
                break  # stopped by max_steps inside a cycle
            state.stretch = 0
            state.cycle += 1
            if phase.on_cycle_end is not None:
                phase.on_cycle_end(state)
            if running:
                self._log_running(phase, state, running, optimizers)
                running = {}
            if not phase.eval_every:
                best_model_state = self._select(phase, state, best_model_state, best_path, optimizers, schedulers)
            if state.step - saved_step >= epoch_steps or time.monotonic() - last_save > self.checkpoint_every_s:
                self._save(last_path, phase, state, optimizers, schedulers)
                last_save, saved_step = time.monotonic(), state.step
        if phase.eval_split and state.last_eval_step != state.step and not self._stop:
            best_model_state = self._select(phase, state, best_model_state, best_path, optimizers, schedulers)
        return best_model_state

    def _stopped(self, phase: Phase, state: PhaseState) -> bool:
        return state.done or (phase.max_steps is not None and state.step >= phase.max_steps) or (
            phase.patience is not None and state.bad_evals >= phase.patience)

    def _bar(self, phase: Phase, state: PhaseState) -> PhaseProgress | None:
        """The phase's progress (a live bar on a terminal; its summary line in any case), or None
        without ``train.progress`` and on ranks other than 0."""
        if not self.progress:
            return None
        per_cycle = sum(self._stretch_len(s, phase) for s in phase.stretches)
        total = min(per_cycle * phase.cycles, phase.max_steps or math.inf)
        label = f"{self.label}/{phase.name}" if self.label else phase.name
        return PhaseProgress(label, int(total), initial=state.step, primary={t.name: t.primary_metric for t in self.tasks})

    def _owned(self, optimizer: torch.optim.Optimizer) -> tuple[set[int], list[nn.Parameter]]:
        """The ids of ``optimizer``'s parameters and the model's other trainable parameters, found
        once a phase (walking the model at every step cost 70 µs a step)."""
        own = {id(p) for g in optimizer.param_groups for p in g["params"]}
        return own, [p for p in self.model.parameters() if p.requires_grad and id(p) not in own]

    def _step(self, phase: Phase, stretch: Stretch, state: PhaseState, optimizers, schedulers, batch) -> dict[str, float]:
        """One optimiser step. Only the stretch's optimiser's parameters get gradients: the others
        are frozen for the step (AdaShare's policy stretch computes no weight gradient)."""
        frozen = [p for p in self._ownership[stretch.optimizer][1] if p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            return self._optimizer_step(phase, stretch, state, optimizers, schedulers, batch)
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def _optimizer_step(self, phase: Phase, stretch: Stretch, state: PhaseState, optimizers, schedulers,
                        batch) -> dict[str, float]:
        optimizer = optimizers[stretch.optimizer]
        kwargs = stretch.forward_kwargs(state) if stretch.forward_kwargs else {}
        batch = to_device(batch, self.device)
        # DDP synchronises gradients when the step trains every parameter in one forward call;
        # otherwise (a stretch over some groups, per-task batches) the gradients are averaged by hand.
        own = self._ownership[stretch.optimizer][0]
        use_ddp = self.ddp is not None and not isinstance(batch, dict) and self._ddp_params <= own
        names = [t.name for t in self.tasks]
        aux_extra: dict[str, Any] = {}
        if phase.loop == "round_robin":  # the one task whose batch this is (round_robin_batches)
            names = list(batch) if isinstance(batch, dict) else list(batch[1])
            aux_extra = {"tasks": names}  # auxiliary losses of the current task only
            use_ddp = False  # the other tasks' heads get no gradient this step
        with self._autocast():
            outputs = forward_batch(self.ddp if use_ddp else self.model, batch, names, kwargs)
        by_name = {t.name: t for t in self.tasks}
        names = list(outputs)
        losses = compute_losses(self.tasks, {t: (out.float(), y, m) for t, (out, y, m) in outputs.items()})
        if names and not _all_finite(losses):
            bad = next(i for i, v in enumerate(losses.tolist()) if not math.isfinite(v))
            raise TrainingError(
                f"non-finite loss ({losses[bad].item()}) in task {names[bad]!r}, phase {phase.name!r}, "
                f"step {state.step + 1}; {self._kept_checkpoint(phase)}")
        weights = torch.tensor([by_name[t].weight for t in names], dtype=losses.dtype, device=losses.device)
        total = (losses * weights).sum() if names else torch.zeros((), device=self.device)
        logged = {f"loss/{t}": v for t, v in zip(names, losses.tolist())}
        if stretch.objective == "task+aux":
            aux = self.model.aux_losses(**(stretch.aux_kwargs(state) if stretch.aux_kwargs else {}), **aux_extra)
            for name, value in aux.items():
                total = total + value
                logged[f"aux/{name}"] = value.item()
        optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(total) if self.scaler else total).backward()
        if D.is_distributed() and not use_ddp:
            _average_gradients([p for g in optimizer.param_groups for p in g["params"]])
        spec = phase.optimizers[stretch.optimizer]
        if spec.step_without_grad:  # TF1 semantics: a zero gradient, so momentum still moves it
            for g in optimizer.param_groups:
                for p in g["params"]:
                    if p.grad is None and p.requires_grad:
                        p.grad = torch.zeros_like(p)
        if self.scaler:
            self.scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if spec.grad_clip is not None:
            norm = nn.utils.clip_grad_norm_(params, spec.grad_clip)
        else:
            # one foreach call, not one norm per parameter (as clip_grad_norm_ computes it)
            grads = [p.grad.detach() for p in params]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())
        if self.scaler is None and not _all_finite(norm):  # fp16: the scaler skips such steps itself
            raise TrainingError(
                f"non-finite gradient in phase {phase.name!r}, step {state.step + 1} (stretch on {stretch.split!r}); "
                f"{self._kept_checkpoint(phase)}")
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        if schedulers.get(stretch.optimizer) is not None:
            schedulers[stretch.optimizer].step()
        state.step += 1
        state.stretch_step += 1
        if phase.after_step is not None:
            phase.after_step(state, stretch.split)
        logged["loss/total"] = total.item()
        return logged

    def _log_running(self, phase, state, running, optimizers) -> None:
        values = {k: sum(v) / len(v) for k, v in running.items()}
        for name, opt in optimizers.items():
            for g in opt.param_groups:
                values[f"lr/{name}/{g.get('name', 'group')}"] = g["lr"]
        for k, v in state.extra.items():
            if isinstance(v, (int, float)):
                values[f"state/{k}"] = v
        self.logger.log(phase.name, state.step, values, split="train", cycle=state.cycle)

    # ------------------------------------------------------------------ selection

    def _select(self, phase, state, best_model_state, best_path, optimizers, schedulers):
        if not phase.eval_split:
            return best_model_state
        state.last_eval_step = state.step
        kwargs = phase.eval_kwargs(state) if phase.eval_kwargs else {}
        val = evaluate(self.model, self.data, phase.eval_split, self.tasks, batch_size=self.eval_batch_size,
                       device=self.device, forward_kwargs=kwargs)
        if not state.selection_base:  # the phase's first evaluation: what `skill` and `loss_ratio` measure from
            state.selection_base = {t: {m: v for m, v in ms.items() if m != "n"} for t, ms in val.items()}
        state.evals += 1
        score = selection_score(val, self.tasks, self.reference, self.selection_metric, state.selection_base)
        flat = {f"{t}/{m}": v for t, ms in val.items() for m, v in ms.items() if m != "n"}
        flat["selection_score"] = score
        self.logger.log(phase.name, state.step, flat, split=phase.eval_split, cycle=state.cycle)
        for split in phase.monitor_splits:  # learning curves only: nothing below reads them
            seen = evaluate(self.model, self.data, split, self.tasks, batch_size=self.eval_batch_size,
                            device=self.device, forward_kwargs=kwargs)
            self.logger.log(phase.name, state.step, {f"{t}/{m}": v for t, ms in seen.items() for m, v in ms.items()
                                                     if m != "n"},
                            split=MONITOR_LABELS.get(split, split), cycle=state.cycle)
        progress = self._progress
        eligible = state.cycle >= phase.select_from_cycle
        improved_now = False  # the whole model taken by the selection at this evaluation
        if phase.selection == "per_task":
            improved = []
            current = self.model.state_dict()
            if best_model_state is None:
                best_model_state = {k: v.detach().clone() for k, v in current.items()}
            for t in self.tasks:
                metric = val[t.name].get(t.primary_metric)
                if metric is None or not math.isfinite(metric):
                    continue
                prev = state.task_best.get(t.name)
                better = prev is None or (metric > prev if higher_is_better(t.kind, t.primary_metric) else metric < prev)
                if better:
                    state.task_best[t.name] = metric
                    prefixes = tuple(self.model.task_prefixes(t.name) or ())
                    for k, v in current.items():
                        if k.startswith(prefixes):
                            best_model_state[k] = v.detach().clone()
                    improved.append(t.name)
            state.bad_evals = 0 if improved else state.bad_evals + 1
            if improved:
                state.best_cycle = state.cycle
                self._save(best_path, phase, state, optimizers, schedulers, model_state=best_model_state)
        elif phase.selection == "score" and eligible:
            if state.best_score is None or score > state.best_score:
                state.best_score, state.best_cycle, state.bad_evals = score, state.cycle, 0
                improved_now = True
                state.best_eval, state.best_step = state.evals, state.step
                best_model_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                self._save(best_path, phase, state, optimizers, schedulers, model_state=best_model_state)
            else:
                state.bad_evals += 1
        elif phase.selection == "last":
            best_model_state = None
        if progress is not None:
            progress.set_validation(val, selected=improved_now, cycle=state.cycle)
        return best_model_state

    def _warn_first_evaluation(self, phase: Phase, state: PhaseState) -> None:
        """The selected checkpoint is the phase's first evaluation although later ones exist: most
        often a model that had not learned yet, chosen by a rule its later evaluations did not beat."""
        if phase.selection != "score" or state.best_eval != 1 or state.evals < 2 or not D.is_main():
            return
        rule = "validation Δ_MTL (--reference)" if self.reference else f"train.selection_metric {self.selection_metric!r}"
        warnings.warn(f"phase {phase.name!r}: the selected checkpoint is the first of {state.evals} evaluations "
                      f"(step {state.best_step}) by {rule}: the model may be barely trained; look at the validation "
                      "curves (metrics.jsonl), train longer or choose another rule", stacklevel=2)

    def _finish(self, phase: Phase, best_model_state) -> None:
        """Leave the selected model in ``self.model`` (the best checkpoint, or the last state)."""
        if phase.selection != "last" and best_model_state is not None:
            self.model.load_state_dict(best_model_state)
        elif D.is_main():  # "last", or nothing was ever evaluated: the final state is the selection
            save_checkpoint(self.ckpt_path(phase.name, "best"), {"model": self.model.state_dict()})

    def _summary(self, phase: Phase, state: PhaseState) -> dict[str, Any]:
        return {"phase": phase.name, "cycles": state.cycle, "steps": state.step, "best_cycle": state.best_cycle,
                "best_step": state.best_step, "evaluations": state.evals, "best_score": state.best_score,
                "first_val_loss": {t: ms.get("loss") for t, ms in state.selection_base.items()}, "task_best": dict(state.task_best), "selection": phase.selection,
                "stopped_early": phase.patience is not None and state.bad_evals >= phase.patience}
