"""The GRPO trainer: RL from the SFT checkpoint, the same recipe for every SFT checkpoint.

Per step s = 1..rl.steps:
  1. Take the next `prompts_per_step` training prompts from a seed-controlled stream (shuffled
     each pass over the training set).
  2. The rollout engine samples `group_size` responses per prompt at rl.temperature / top_p and
     reports the log-prob of every sampled token under its sampling distribution.
  3. Reward = the task's verifier score of the response; a response cut off at max_new_tokens
     scores 0.
  4. Advantages within each prompt's group: r - mean(r), divided by std(r) + 1e-6 unless
     rl.scale_rewards=false (Dr. GRPO). With rl.skip_uniform_groups, groups whose rewards are all
     equal (all right or all wrong) carry no signal and are dropped from the update.
  5. `epochs` optimizer steps on the batch, each accumulating micro-batches:
        per-token loss = clipped-ratio policy gradient (clip_low / clip_high, DAPO-style
        asymmetric), times the truncated importance weight min(exp(old - engine), tis_cap) that
        corrects for the engine/trainer log-prob gap, plus kl_coef * k3-KL to the SFT policy;
        aggregated by rl.loss_aggregation with normalisers computed over the whole step, so the
        micro-batch split does not change the gradient.
     The policy's log-probs are taken at the sampling temperature (the policy that sampled is
     softmax(logits / T)). With epochs = 1 the "old" policy is the current one (ratio = 1 and
     the clip never binds); with epochs > 1 it is a no-grad pass before the first update.
  6. Push the new weights to the engine and check the sync; a failed check stops the run rather
     than train on stale weights. Staleness is checked exactly: the vLLM engine's workers
     fingerprint the weights they compute with (float64 sums per decoder layer, embedding, norm
     and LM head; pear_exp.rollout.sync) and these must equal the same sums of the trainer's weights
     cast to the engine's dtype; a skipped or partial sync names the groups that differ (also
     checked after the first push, before step 1). Then a probe measures log-prob drift: the
     engine's and the trainer's log-probs (trainer forward under autocast to the engine's dtype)
     on a fixed probe batch, logged as sync_logprob_diff_mean / _max; a mean above
     rollout.sync_tolerance stops the run (what no bf16 rounding reaches: a wrong model, kernel
     or config). An engine that generates with the trainer's own model object (the hf engine)
     needs no fingerprint and is probed after the first update of the run only (the probe is a
     generate and a forward pass: a few % of every step).
  7. Every eval_every steps: held-out greedy accuracy and sampled pass@1.

Deviations from the GRPO paper (DeepSeekMath) worth knowing: no KL by default (kl_coef = 0, as
in DAPO and Dr. GRPO), asymmetric clipping, optional uniform-group skipping and TIS. The engine's
log-probs are used only for TIS; with top_p < 1 they are renormalised over the nucleus and are
then not comparable with the trainer's, so keep top_p = 1 when tis_cap is set.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from pear_exp.config import ParallelStrategy, RLConfig
from pear_exp.data import Row, collate, make_row
from pear_exp.errors import RunStopped
from pear_exp.losses import aggregation_coefficients, group_advantages, grpo_token_loss
from pear_exp.models import end_of_turn_ids, prompt_ids
from pear_exp.packing import Packed, padding_free
from pear_exp.policy import TokenLogProbs
from pear_exp.rollout import RolloutEngine, grade_finished
from pear_exp.rollout.sync import fingerprint_mismatch, sync_logprob_diff, trainer_fingerprint
from pear_exp.tasks.base import Problem
from pear_exp.train.distributed import World
from pear_exp.train.loop import FiniteGuard, Loop, autocast, resolve_precision, start_loop

logger = logging.getLogger(__name__)  # Hydra's job logging: the console and the run's log file


@dataclass
class RolloutBatch:
    """The sequences of one GRPO step that enter the update (uniform groups already dropped)."""

    rows: list[Row]  # prompt + response; behavior_logprobs: the engine's sampling log-probs
    advantages: list[float]  # one per row
    rewards: torch.Tensor  # (prompts, group_size), every sample, kept or not
    response_lengths: list[int]  # every sample
    samples: list[dict]  # a few (prompt, response, reward) for inspection


def prompt_stream(problems: list[Problem], seed: int) -> Iterator[Problem]:
    rng = random.Random(seed)
    while True:
        order = list(problems)
        rng.shuffle(order)
        yield from order


def collect(engine: RolloutEngine, tokenizer, problems: list[Problem], task, cfg: RLConfig, *,
            system_prompt: str | None, seed: int) -> RolloutBatch:
    prompts = [prompt_ids(tokenizer, p.prompt, system_prompt) for p in problems]
    completions = engine.generate(prompts, n=cfg.group_size, temperature=cfg.temperature,
                                  top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                                  stop_token_ids=end_of_turn_ids(tokenizer), seed=seed,
                                  desc="rl: rollouts")
    flat = [c for group in completions for c in group]
    texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for c in flat]
    rewards = torch.tensor(grade_finished(
        task.score_many, [p for p in problems for _ in range(cfg.group_size)], flat, texts,
        cut_off=0.0)).view(len(problems), cfg.group_size)  # (prompts, group_size)
    advantages = group_advantages(rewards, scale=cfg.scale_rewards)
    rows, kept_advantages = [], []
    for i, (prompt, group) in enumerate(zip(prompts, completions)):
        if cfg.skip_uniform_groups and bool((rewards[i] == rewards[i, 0]).all()):
            continue
        for j, c in enumerate(group):
            rows.append(make_row(prompt, c.token_ids, c.logprobs))
            kept_advantages.append(advantages[i, j].item())
    lengths = [len(c.token_ids) for c in flat]
    samples = [{"prompt": p.prompt, "reward": rewards[i, 0].item(),
                "response": texts[i * cfg.group_size]} for i, p in enumerate(problems[:8])]
    return RolloutBatch(rows, kept_advantages, rewards, lengths, samples)


def micro_batches(rows: list[Row], advantages: list[float], size: int, pad_id: int,
                  world: World) -> list[dict]:
    """This rank's micro-batches of the step: length-sorted, each padded only to its own longest
    row, at most `size` rows, and the same number on every rank (DDP and FSDP need every rank to
    run as many forward/backward passes). A rank left without rows gets one row with zero
    coefficient (`dummy`)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    per_rank = math.ceil(len(order) / (size * world.size))
    parts = [p.tolist() for p in torch.tensor(order).tensor_split(per_rank * world.size)]
    out = []
    for idx in world.shard(parts):
        dummy = not idx
        idx = idx or order[:1]
        batch = collate([rows[i] for i in idx], pad_id)
        batch["advantages"] = torch.tensor([advantages[i] for i in idx]).unsqueeze(1)  # (b, 1)
        batch["index"] = torch.tensor(idx)
        batch["dummy"] = dummy
        out.append(batch)
    return out


def train_grpo(
    model,
    tokenizer,
    engine: RolloutEngine | None,
    train_problems: list[Problem],
    task,
    cfg: RLConfig,
    *,
    seed: int,
    system_prompt: str | None,
    sync_tolerance: float,
    log: Callable[[dict, int], None] = lambda metrics, step: None,
    evaluate: Callable[[int], dict] | None = None,
    log_samples: Callable[[list[dict], int], None] | None = None,
    checkpoint_dir: Path | None = None,
    reference=None,
    world: World | None = None,
    engine_model=None,
) -> dict[str, float]:
    """Run cfg.steps GRPO steps on `model` in place; returns the last step's metrics.

    `reference`: the frozen initial policy for the KL term (default: a copy of `model` as given).
    With checkpoint_dir, a checkpoint is written every cfg.checkpoint_every steps and the run
    resumes from the latest one there: same prompt stream position and rollout seeds.
    Several processes: every rank calls this; rank 0 holds the `engine` (None elsewhere),
    samples each batch and sends it to the others, and every rank trains on its share.
    `engine_model`: under FSDP, an unsharded copy of the model on rank 0 that receives the
    weights after each update and serves the engine and the parity probe (default: `model`).
    """
    world = world or World()
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    if world.is_main:
        logger.info(f"rl: {resolve_precision(cfg.precision, device, model.config.hidden_size).value}"
                    f" on {device.type}, " + ("padding-free" if cfg.padding_free else "padded")
                    + " micro-batches")
    pad_id = tokenizer.pad_token_id
    if cfg.kl_coef > 0 and reference is None:
        reference = copy.deepcopy(model)
    if reference is not None:
        reference = TokenLogProbs(reference.eval().requires_grad_(False), cfg.logprob_chunk_size)
    sharded = world.distributed and world.strategy == ParallelStrategy.fsdp
    if sharded and world.is_main and engine_model is None:
        raise ValueError("under FSDP, rank 0 needs an unsharded engine_model for the engine")
    engine_model = engine_model if sharded else model
    loop = start_loop(model, cfg, world, total_steps=cfg.steps * cfg.epochs, min_lr_ratio=1.0,
                      checkpoint_dir=checkpoint_dir)  # warm-up, then flat
    start = loop.start
    stream = prompt_stream(train_problems, seed)
    for _ in range(start * cfg.prompts_per_step):  # the data position
        next(stream)
    stops = end_of_turn_ids(tokenizer)
    probe_prompts = [prompt_ids(tokenizer, p.prompt, system_prompt) for p in train_problems[:8]]

    def push_weights() -> None:
        """The policy's weights into the engine (rank 0); every rank takes part under FSDP."""
        if sharded:
            state, _ = world.full_state(model)
            if world.is_main:
                engine_model.load_state_dict(state)
        if world.is_main:
            engine.sync_weights(engine_model)

    def check_sync(where: str, probe: bool) -> dict[str, float]:
        """Step 6 (module docstring) on rank 0; every rank stops together."""
        found, problem = {}, None
        if world.is_main:
            fingerprint = getattr(engine, "weight_fingerprint", None)
            held = fingerprint() if fingerprint else None
            if held is not None:
                sums, dtypes = held
                stale = fingerprint_mismatch(sums, trainer_fingerprint(engine_model, engine.dtype,
                                                                       dtypes))
                if stale:
                    problem = (f"the rollout engine's weights differ from the trainer's in "
                               f"{', '.join(stale)}: the weight sync was skipped or partial")
            if problem is None and probe:
                mean, worst = sync_logprob_diff(
                    engine, engine_model, probe_prompts, temperature=cfg.temperature,
                    stop_token_ids=stops, pad_id=pad_id, dtype=getattr(engine, "dtype", None))
                found = {"sync_logprob_diff_mean": mean, "sync_logprob_diff_max": worst}
                if not mean <= sync_tolerance:
                    problem = (f"the rollout engine's log-probs differ from the trainer's by "
                               f"{mean:.4g} on average (max {worst:.4g}) > "
                               f"rollout.sync_tolerance={sync_tolerance}")
        found, problem = world.broadcast((found, problem))
        if problem:
            raise RunStopped(f"{where}: after the weight sync {problem}; refusing to train on "
                             f"stale weights")
        return found

    metrics: dict[str, float] = {}
    push_weights()
    check_sync("rl start", probe=False)
    # the hf engine generates with engine_model itself: probed once (module docstring, step 6)
    shares_model = world.is_main and getattr(engine, "model", None) is engine_model
    probed = False
    for step in tqdm(range(start + 1, cfg.steps + 1), desc="rl", leave=False, initial=start,
                     total=cfg.steps, disable=not world.is_main):
        model.eval()
        started = time.perf_counter()
        problems = [next(stream) for _ in range(cfg.prompts_per_step)]
        batch = None
        if world.is_main:
            batch = collect(engine, tokenizer, problems, task, cfg, system_prompt=system_prompt,
                            seed=seed * 1_000_003 + step)
        batch = world.broadcast(batch)
        rollout_seconds = time.perf_counter() - started
        rewards = batch.rewards
        metrics = {
            "reward_mean": rewards.mean().item(),
            "accuracy": (rewards == 1.0).float().mean().item(),
            "response_length": sum(batch.response_lengths) / len(batch.response_lengths),
            "kept_frac": len(batch.rows) / rewards.numel(),
            "rollout_tokens_per_s": sum(batch.response_lengths) / rollout_seconds,
        }
        if batch.rows:
            model.train()
            guard = FiniteGuard("rl", step, checkpoint_dir)  # a nan / inf stops before any save
            metrics.update(update(loop, reference, batch, cfg, device, pad_id, world, guard))
            guard.check_weights(model, world)  # before the engine or a checkpoint gets them
            push_weights()
            model.eval()
            metrics.update(check_sync(f"rl step {step}", probe=not (probed and shares_model)))
            probed = True
        metrics["step_seconds"] = time.perf_counter() - started
        log(metrics, step)
        if world.is_main and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            if evaluate is not None:
                evaluate(step)
            if log_samples is not None:
                log_samples(batch.samples, step)
        if checkpoint_dir and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            loop.save(checkpoint_dir, step, world)
    loop.close()
    return metrics


def update(loop: Loop, reference, batch: RolloutBatch, cfg: RLConfig, device, pad_id: int,
           world: World, guard: FiniteGuard | None = None) -> dict[str, float]:
    """`cfg.epochs` optimizer steps on one rollout batch; returns the update's diagnostics.

    reference: a TokenLogProbs module of the frozen initial policy, or None."""
    models = (loop.model, reference.model if reference is not None else None)
    # the trainer's forwards attend within rows (generation, outside, keeps sdpa)
    with padding_free(*models) if cfg.padding_free else contextlib.nullcontext():
        return _update(loop, reference, batch, cfg, device, pad_id, world, guard)


def _update(loop: Loop, reference, batch: RolloutBatch, cfg: RLConfig, device, pad_id: int,
            world: World, guard: FiniteGuard | None) -> dict[str, float]:
    policy = loop.policy
    full = collate(batch.rows, pad_id)
    coef_by_row = aggregation_coefficients(full["loss_mask"], cfg.loss_aggregation.value,
                                           cfg.max_new_tokens)  # (rows, seq), over the whole step
    micro = micro_batches(batch.rows, batch.advantages, cfg.micro_batch_size, pad_id, world)
    autocast_bf16 = autocast(device, resolve_precision(cfg.precision, device,
                                                       loop.model.config.hidden_size))
    for mb in micro:
        mb["coef"] = coef_by_row[mb["index"], : mb["input_ids"].shape[1]] * (not mb["dummy"])
        ids, attn = mb["input_ids"].to(device), mb["attention_mask"].to(device)
        mb["packed"] = Packed.from_padded(ids, attn) if cfg.padding_free else None
        if cfg.epochs > 1 or reference is not None:
            with torch.no_grad(), autocast_bf16:
                if cfg.epochs > 1:
                    mb["old"] = policy(ids, attn, cfg.temperature, packed=mb["packed"])[0].cpu()
                if reference is not None:
                    mb["ref"] = reference(ids, attn, cfg.temperature,
                                          packed=mb["packed"])[0].cpu()
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        sums = dict.fromkeys(("loss", "clipped", "kl", "tis", "entropy", "tokens"), 0.0)
        for k, mb in enumerate(micro):
            dev = {key: v.to(device) if torch.is_tensor(v) else v for key, v in mb.items()}
            with world.gradient_sync(policy, k == len(micro) - 1):
                with autocast_bf16:
                    out = policy(dev["input_ids"], dev["attention_mask"], cfg.temperature,
                                 entropy=True, packed=mb["packed"])
                logp, entropy = out.logprobs, out.entropy
                old = dev["old"] if "old" in dev else logp.detach()
                loss_tok, stats = grpo_token_loss(
                    logp, old, dev["advantages"], mask=dev["loss_mask"],
                    clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                    engine_logprobs=dev["behavior_logprobs"], tis_cap=cfg.tis_cap,
                    ref_logprobs=dev.get("ref"), kl_coef=cfg.kl_coef,
                )
                loss = (loss_tok * dev["coef"]).sum()
                # DDP / FSDP average gradients over the ranks; the step's loss is their sum
                (loss * world.size).backward()
            mask = dev["loss_mask"] * (not mb["dummy"])
            sums["tokens"] += mask.sum().item()
            sums["loss"] += loss.item()
            for key in ("clipped", "kl", "tis"):
                if key in stats:
                    sums[key] += (stats[key] * mask).sum().item()
            sums["entropy"] += (entropy * mask).sum().item()
        # the loss summed over the ranks and the global norm: every rank stops together
        grad_norm = loop.step(cfg.grad_clip, guard, world.sum([sums["loss"]])[0],
                              f", epoch {epoch + 1}" if cfg.epochs > 1 else "")
    seconds = time.perf_counter() - started
    sums = dict(zip(sums, world.sum(list(sums.values()))))
    tokens = max(sums["tokens"], 1.0)
    out = {"loss": sums["loss"], "grad_norm": grad_norm, "lr": loop.schedule.get_last_lr()[0],
           "clip_frac": sums["clipped"] / tokens, "entropy": sums["entropy"] / tokens,
           "train_tokens_per_s": tokens * cfg.epochs / seconds}
    if cfg.kl_coef > 0:
        out["kl"] = sums["kl"] / tokens
    if cfg.tis_cap is not None:
        out["tis_mean"] = sums["tis"] / tokens
    return out
