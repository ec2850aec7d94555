"""The SFT trainer: PEAR-weighted supervised fine-tuning on rows with behavior log-probs.

Algorithm, per optimizer step (docs/method.md, Normalisation):
    for each micro-batch of the step:
        p_t = log pi_theta(y_t | x, y_<t)                    (with gradient, temperature 1)
        q_t = log pi_theta at the target temperature, detached (== p_t.detach() at temperature 1)
        W   = pear_weights(q, b, loss_mask, level, ...)       (detached, 0 off the loss mask;
              weighting=none: the loss mask; dft: exp(p_t) detached, dft_weights)
        l_t = -p_t                                           (sft.base_loss=nll)
            = KL(pi_b || pi_theta) at t over pi_b's stored top-k plus one bucket for the rest
              (sft.base_loss=kl, losses.topk_kl: pi_b as stored, pi_theta at temperature 1)
        backward of sum_t W_t * l_t   (asft: + asft_kl_coef * sum_t KL(pi_ref || pi_theta)_t)
    divide every gradient by N, N = loss tokens in the whole step (or sum W: self-normalised),
    clip the gradient norm, AdamW step, learning-rate schedule step.
Dividing the accumulated gradient by N once, after all micro-batches, makes the objective exactly
sum W l / N for any micro-batch split and any number of data-parallel processes
(pear_exp/train/distributed.py: each rank takes its share of the step; N is summed over the
ranks).

Batches: data.length_grouped_batches (grouped by length within windows, then shuffled).
Weighting `none` is plain SFT (W = mask); the tiny models are pretrained with this same loop.
Weightings `iw_sft` / `iw_sft_token` are iw-SFT (arXiv 2507.12856): weights of the current model
against the frozen initial model (a copy taken before the first step, also when resuming: the
copy is of the model as given, the checkpoint is loaded after it),
pear_exp.weighting.iw_sft_weights.
Weighting `dft` is DFT (arXiv 2508.05629): W_t = pi_theta(y_t | x, y_<t) at temperature 1,
detached, as its official trainer computes it; with normalization=tokens the loss is its
sum_t sg(p_t) nll_t / (loss tokens).
Weighting `asft` is ASFT (arXiv 2509.23753): DFT's weights on the NLL plus asft_kl_coef times the
full-vocabulary KL(pi_ref || pi_theta) to the frozen initial model on every loss token, as its
official trainer (both at temperature 1; the anchor is unweighted and shares the normaliser N).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from pear_exp.config import BaseLoss, Normalization, SFTConfig, WeightingConfig, WeightLevel
from pear_exp.data import (
    TOPK_COLUMNS, Row, collate, length_grouped_batches, token_budget_groups,
)
from pear_exp.losses import weighted_nll_sum
from pear_exp.packing import Packed, padding_free
from pear_exp.policy import TokenLogProbs
from pear_exp.train.distributed import World
from pear_exp.train.loop import FiniteGuard, autocast, resolve_precision, start_loop
from pear_exp.weighting import (
    IW_SFT_CLIPS, dft_weights, iw_sft_weights, pear_weights, pear_weights_with_stats,
)

logger = logging.getLogger(__name__)  # Hydra's job logging: the console and the run's log file

# PEAR weight health, judged on each logged step's stats and reported once (weight_health).
FLOOR_FRAC_WARN = 0.5  # "most" loss tokens at W = exp(L_lo) ~ 4.5e-5: they no longer train
ESS_WARN = 0.1  # (sum W)^2 / (N sum W^2): under 0.1 the step's gradient rests on < 10% of its
# tokens (Kish's effective sample size; a 10x variance inflation); a 16k-token trace whose
# policies match exactly already gets 0.12 from the discount gamma = 0.999 alone


def weighting_kwargs(cfg: WeightingConfig) -> dict:
    return dict(
        level=cfg.level.value, block_size=cfg.block_size, gamma=cfg.gamma,
        delta_clip=tuple(cfg.delta_clip), log_weight_clip=tuple(cfg.log_weight_clip),
    )


def train_sft(
    model,
    rows: Sequence[Row],
    cfg: SFTConfig,
    weighting: WeightingConfig,
    *,
    pad_id: int,
    seed: int,
    log: Callable[[dict, int], None] = lambda metrics, step: None,
    desc: str = "sft",
    checkpoint_dir: Path | None = None,
    world: World | None = None,
    reference=None,
    snapshot: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Train `model` in place for cfg.steps optimizer steps; returns the last logged metrics.
    `snapshot(step)` is called on every rank after each optimizer step in cfg.keep_steps.

    With checkpoint_dir, a checkpoint is written every cfg.checkpoint_every steps and training
    resumes from the latest one found there (same batches, same optimizer and RNG states).
    In a world of several processes every rank calls this with the same rows and seed: each
    trains on its share of every step's sequences (pear_exp/train/distributed.py); under FSDP
    `model` ends up sharded (gather it with world.full_state).
    `reference`: the frozen policy iw-SFT weighs against (default: a copy of `model` as given).
    """
    world = world or World()
    if cfg.padding_free and cfg.batch_size % world.size:
        raise ValueError(f"sft.batch_size={cfg.batch_size} must be a multiple of the "
                         f"{world.size} processes")
    if not cfg.padding_free and cfg.batch_size % (cfg.micro_batch_size * world.size):
        raise ValueError(
            f"sft.batch_size={cfg.batch_size} must be a multiple of sft.micro_batch_size="
            f"{cfg.micro_batch_size}" + (f" x {world.size} processes" if world.distributed else "")
        )
    if len(rows) < cfg.batch_size:
        raise ValueError(f"{len(rows)} training rows is fewer than sft.batch_size={cfg.batch_size}")
    distill = cfg.base_loss == BaseLoss.kl
    if distill and weighting.level == WeightLevel.asft:
        raise ValueError("weighting=asft adds its KL anchor to the NLL base loss (as its source); "
                         "it does not combine with sft.base_loss=kl")
    if distill and TOPK_COLUMNS[0] not in rows[0]:
        raise ValueError("sft.base_loss=kl needs rows with the behavior policy's top-k "
                         f"({', '.join(TOPK_COLUMNS)}): sample them with behavior.top_k > 0")
    torch.manual_seed(seed)
    if weighting.level.needs_reference:  # the frozen initial model, copied before any step
        reference = reference if reference is not None else copy.deepcopy(model)
    else:
        reference = None
    # both models attend within rows while this stage runs
    with padding_free(model, reference) if cfg.padding_free else contextlib.nullcontext():
        return _train(model, rows, cfg, weighting, pad_id=pad_id, seed=seed, log=log, desc=desc,
                      checkpoint_dir=checkpoint_dir, world=world, reference=reference,
                      snapshot=snapshot)


def _train(model, rows, cfg: SFTConfig, weighting: WeightingConfig, *, pad_id, seed, log, desc,
           checkpoint_dir, world: World, reference, snapshot) -> dict[str, float]:
    distill = cfg.base_loss == BaseLoss.kl
    if reference is not None:
        reference = TokenLogProbs(reference.eval().requires_grad_(False), cfg.logprob_chunk_size)
    iw_per_token = weighting.level == WeightLevel.iw_sft_token
    iw_clip = tuple(weighting.iw_clip or IW_SFT_CLIPS["token" if iw_per_token else "sequence"])
    model.train()
    device = next(model.parameters()).device
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device,
                                                               model.config.hidden_size))
    if world.is_main:
        logger.info(f"{desc}: {cfg.precision.value} on {device.type}, "
                    + ("padding-free" if cfg.padding_free else "padded") + " micro-batches")
    loop = start_loop(model, cfg, world, total_steps=cfg.steps, min_lr_ratio=cfg.min_lr_ratio,
                      checkpoint_dir=checkpoint_dir)
    policy, start = loop.policy, loop.start
    lengths = [len(r["input_ids"]) for r in rows]
    batches = length_grouped_batches(lengths, cfg.batch_size, seed)
    token_budget = cfg.micro_batch_tokens or cfg.micro_batch_size * cfg.max_seq_len
    for _ in range(start):  # the data position: skip the batches already trained on
        next(batches)
    autocast_bf16 = autocast(device, cfg.precision)
    # PEAR's p_t is the current model at the RL temperature: a second, detached log-softmax of
    # the same forward pass when that temperature is not 1.
    target_temperature = (weighting.target_temperature
                          if weighting.level.is_pear and weighting.target_temperature != 1.0
                          else None)
    metrics: dict[str, float] = {}
    window = {"tokens": 0, "seconds": 0.0}
    warned = False  # weight health: once per stage run
    bar = tqdm(range(start, cfg.steps), desc=desc, leave=False, initial=start, total=cfg.steps,
               disable=not world.is_main)
    for step in bar:
        started = time.perf_counter()
        index = world.shard(next(batches))  # every rank draws the same batch, keeps its share
        totals = {"num": 0.0, "nll": 0.0, "kl": 0.0, "anchor_kl": 0.0, "tokens": 0.0,
                  "weight": 0.0, "slots": 0, "real": 0}
        stats_parts = []
        logging_step = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
        micro_batches = split_step(index, lengths, cfg, token_budget, world)
        for number, micro_index in enumerate(micro_batches, 1):
            micro = [rows[i] for i in micro_index]
            batch = {k: v.to(device) for k, v in collate(micro, pad_id).items()}
            packed = (Packed.from_padded(batch["input_ids"], batch["attention_mask"])
                      if cfg.padding_free else None)
            totals["slots"] += (packed.input_ids if packed else batch["input_ids"]).numel()
            totals["real"] += int(batch["attention_mask"].sum())
            # gradients are reduced over the ranks once, in the step's last backward
            with world.gradient_sync(policy, number == len(micro_batches)):
                anchor = None  # ASFT: the frozen initial model's logits (or what makes them)
                if weighting.level == WeightLevel.asft:
                    with torch.no_grad(), autocast_bf16:
                        anchor = reference.reference_for(batch["input_ids"],
                                                         batch["attention_mask"],
                                                         cfg.logprob_chunk_size, packed)
                with autocast_bf16:
                    out = policy(batch["input_ids"], batch["attention_mask"],
                                 target_temperature=target_temperature,
                                 kl_topk=tuple(batch[c] for c in TOPK_COLUMNS) if distill
                                 else None, kl_reference=anchor,
                                 packed=packed)  # each (batch, seq): the padded layout
                logp, target = out.logprobs, out.target
                mask = batch["loss_mask"]
                if weighting.level == WeightLevel.none:
                    weights = mask
                elif weighting.level in (WeightLevel.dft, WeightLevel.asft):  # p_theta(y_t), T = 1
                    weights = dft_weights(logp, mask)
                elif weighting.level.needs_reference:  # iw-SFT: against the initial model
                    with torch.no_grad(), autocast_bf16:
                        ref = reference(batch["input_ids"], batch["attention_mask"],
                                        packed=packed)[0]
                    weights = iw_sft_weights(logp, ref, mask, per_token=iw_per_token,
                                             clip=iw_clip, temperature=weighting.iw_temperature)
                else:
                    target = logp.detach() if target is None else target
                    weights = pear_weights(target, batch["behavior_logprobs"], mask,
                                           **weighting_kwargs(weighting))  # (batch, seq)
                    if logging_step:
                        stats_parts.append((target, batch["behavior_logprobs"], mask))
                # the base loss per token: -log p(y_t), or KL(behavior top-k || model)
                numerator = (weights * out.kl).sum() if distill else weighted_nll_sum(logp, weights)
                if anchor is not None:  # ASFT: + coef * KL(pi_ref || pi_theta) on every loss token
                    anchor_kl = (mask * out.kl).sum()
                    numerator = numerator + weighting.asft_kl_coef * anchor_kl
                    totals["anchor_kl"] += anchor_kl.item()
                numerator.backward()
            totals["num"] += numerator.item()
            totals["nll"] += -(logp.detach() * mask).sum().item()
            if distill:
                totals["kl"] += (out.kl.detach() * mask).sum().item()
            totals["tokens"] += mask.sum().item()
            totals["weight"] += weights.sum().item()
        totals = dict(zip(totals, world.sum(list(totals.values()))))  # over all ranks
        norm = totals["tokens"] if weighting.normalization == Normalization.tokens else totals["weight"]
        loss = totals["num"] / max(norm, 1e-12)
        for p in loop.params:  # DDP / FSDP averaged over the ranks: the objective is their sum / N
            if p.grad is not None:
                p.grad.div_(max(norm, 1e-12) / world.size)
        # a nan / inf stops the run before it reaches the weights or a checkpoint; the loss sums
        # and the gradient norm are the same on every rank, so every rank stops here together
        guard = FiniteGuard(desc, step + 1, checkpoint_dir)  # desc: "sft", or tiny pretraining
        grad_norm = loop.step(cfg.grad_clip, guard, loss)
        guard.check_weights(model, world)  # finite inputs can still overflow a weight
        window["tokens"] += totals["tokens"]
        window["seconds"] += time.perf_counter() - started
        if logging_step:
            metrics = {
                "loss": loss,
                "nll": totals["nll"] / max(totals["tokens"], 1),
                "lr": loop.schedule.get_last_lr()[0],
                "grad_norm": grad_norm,
                "loss_tokens_per_s": window["tokens"] / max(window["seconds"], 1e-9),
                "pad_frac": 1 - totals["real"] / totals["slots"],  # compute spent on padding
            }
            for key in ("kl", "anchor_kl"):  # per loss token: the KL base loss, ASFT's anchor
                if totals[key]:
                    metrics[key] = totals[key] / max(totals["tokens"], 1)
            if stats_parts:  # PEAR diagnostics over this rank's share of the step
                metrics.update(weight_stats_over(stats_parts, weighting))
                problem = None if warned else weight_health(metrics, weighting)
                if problem and world.is_main:
                    logger.warning(f"sft step {step + 1}: {problem}")
                warned = warned or problem is not None
            log(metrics, step + 1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}")
            window = {"tokens": 0, "seconds": 0.0}
        if snapshot is not None and step + 1 in cfg.keep_steps:  # before the checkpoint: a
            snapshot(step + 1)  # resume from it never skips a snapshot
        if checkpoint_dir and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            loop.save(checkpoint_dir, step + 1, world)
    loop.close()
    return metrics


def split_step(index: list[int], lengths: list[int], cfg: SFTConfig, token_budget: int,
               world: World) -> list[list[int]]:
    """This rank's rows of one optimizer step (`index`) as micro-batches: micro_batch_size rows
    each (padded), or runs of rows within token_budget tokens (padding-free), then as many on
    every rank (the most any rank needs: FSDP gathers the weights in every forward)."""
    if not cfg.padding_free:
        return [index[s : s + cfg.micro_batch_size]
                for s in range(0, len(index), cfg.micro_batch_size)]
    mine = [lengths[i] for i in index]
    groups = token_budget_groups(mine, token_budget)
    if world.distributed:
        counts = [0.0] * world.size
        counts[world.rank] = len(groups)
        groups = token_budget_groups(mine, token_budget, int(max(world.sum(counts))))
    return [[index[j] for j in g] for g in groups]


def weight_stats_over(parts, cfg: WeightingConfig) -> dict[str, float]:
    """PEAR diagnostics over all micro-batches of one step (right-padded to a common width),
    and the step's weights on loss tokens (a tensor, logged as a histogram)."""
    width = max(p[0].shape[1] for p in parts)
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    policy, behavior, mask = (torch.cat([pad(p[k]) for p in parts]) for k in range(3))
    weights, stats = pear_weights_with_stats(policy, behavior, mask, **weighting_kwargs(cfg))
    return {**stats, "weight_hist": weights[mask.bool()]}  # the tensor becomes a histogram


def weight_health(stats: dict, cfg: WeightingConfig) -> str | None:
    """What is wrong with a step's PEAR weights (most loss tokens at the log-weight floor, or a
    collapsed ESS) and what to check; None when neither."""
    floor, ess = stats["log_weight_floor_frac"], stats["weight_ess"]
    found = []
    if floor > FLOOR_FRAC_WARN:
        found.append(f"{floor:.0%} of the loss tokens sit at the log-weight floor (log G clipped "
                     f"at log_weight_clip[0]={cfg.log_weight_clip[0]:g}: weight "
                     f"{math.exp(cfg.log_weight_clip[0]):.1e})")
    if ess < ESS_WARN:
        found.append(f"the weights' effective sample size is {ess:.1%} of the loss tokens")
    if not found:
        return None
    # deltas at delta_clip[0] sum to the floor after this many tokens (1e-9: float division)
    reach = (math.ceil(cfg.log_weight_clip[0] / cfg.delta_clip[0] - 1e-9)
             if cfg.delta_clip[0] < 0 else None)
    return (
        "PEAR weights: " + " and ".join(found) + f" (mean p - b per token "
        f"{stats['delta_mean']:.3g}). Check: behavior.temperature and behavior.top_p against "
        f"weighting.target_temperature={cfg.target_temperature:g} (b_t must be the teacher's "
        "log-prob at the temperature p_t uses, without a nucleus: top_p < 1 biases p - b low); "
        "that teacher and student tokenizers align (a mean p - b of several nats says they do "
        "not); the response lengths against the clips"
        + (f" (delta_clip[0]={cfg.delta_clip[0]:g} reaches the floor after {reach} tokens)"
           if reach else "")
        + "; `plan=true` flags such settings. Reported once."
    )
