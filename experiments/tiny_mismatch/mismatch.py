"""Measure the behavior/student mismatch of a run's behavior data, before (or after) SFT.

    python experiments/tiny_mismatch/mismatch.py RUN_DIR                 # the student base
    python experiments/tiny_mismatch/mismatch.py RUN_DIR --model RUN_DIR/sft/model

For every behavior example: p_t = log pi_theta(y_t) under the given model (default: the run's
student base) at weighting.target_temperature, b_t = the stored behavior log-prob. Prints the
mean per-token log-ratio p - b, the PEAR weight diagnostics of pear_weights_with_stats (ESS, mean,
clip fractions) for each level with the run's weighting settings, over all examples and split by
the style each response is written in (terse: the answer line alone; steps: worked steps, inner
first; reverse: worked steps, outermost first), and the share of the total weight each style gets.
With --json, writes the same numbers to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from datasets import load_from_disk
from omegaconf import OmegaConf

from pear_exp import models
from pear_exp.config import Config
from pear_exp.losses import token_logprobs
from pear_exp.data import collate
from pear_exp.weighting import LEVELS, pear_weights_with_stats


def style_of(response: str, target: int) -> str:
    """terse: no step lines; reverse: the first step reaches the target and the last does not;
    steps: anything else with step lines."""
    lines = [line.rsplit("=", 1)[-1].strip() for line in response.splitlines()[:-1]]
    if not lines:
        return "terse"
    return "reverse" if lines[0] == str(target) and lines[-1] != str(target) else "steps"


def load_config(run_dir: Path) -> Config:
    raw = OmegaConf.load(run_dir / "config.yaml")
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), raw))


@torch.no_grad()
def student_logprobs(model, rows: list[dict], pad_id: int, temperature: float,
                     batch_size: int = 256) -> list[torch.Tensor]:
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = collate(chunk, pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logp = token_logprobs(logits, batch["input_ids"], temperature)  # (batch, seq)
        for k, row in enumerate(chunk):
            out.append(logp[k, : len(row["input_ids"])])
    return out


def measure(rows, logps, w) -> dict:
    """Diagnostics over `rows` (one right-padded batch), for every level."""
    width = max(len(r["input_ids"]) for r in rows)
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[0]))  # noqa: E731
    policy = torch.stack([pad(lp) for lp in logps])
    batch = collate(rows, 0)
    out = {"examples": len(rows), "loss_tokens": int(batch["loss_mask"].sum())}
    for level in LEVELS:
        weights, stats = pear_weights_with_stats(
            policy, batch["behavior_logprobs"], batch["loss_mask"], level=level,
            block_size=w.block_size, gamma=w.gamma, delta_clip=tuple(w.delta_clip),
            log_weight_clip=tuple(w.log_weight_clip))
        stats["weight_sum"] = float(weights.sum())
        out[level] = stats
    mask = batch["loss_mask"].bool()
    raw = (policy - batch["behavior_logprobs"])[mask]
    out["delta_mean"] = float(raw.mean())
    out["student_logprob_per_token"] = float(policy[mask].mean())
    out["behavior_logprob_per_token"] = float(batch["behavior_logprobs"][mask].mean())
    out["student_seq_logprob"] = float((policy * batch["loss_mask"]).sum(1).mean())
    out["behavior_seq_logprob"] = float((batch["behavior_logprobs"] * batch["loss_mask"]).sum(1).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--model", default=None, help="checkpoint (default: the student base)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.run_dir)
    path = args.model or models.resolve_path(cfg.model, cfg.task, cfg.cache_dir)
    model = models.load_model(path, cfg.model.dtype).eval()
    tokenizer = models.load_tokenizer(path, cfg.model)
    data = load_from_disk(str(args.run_dir / "behavior" / "data"))
    rows = data.to_list()
    logps = student_logprobs(model, rows, tokenizer.pad_token_id, cfg.weighting.target_temperature)
    styles = [style_of(r["response"], int(r["prompt"].split()[1])) for r in rows]
    result = {"model": str(path), "all": measure(rows, logps, cfg.weighting)}
    for style in sorted(set(styles)):
        idx = [i for i, s in enumerate(styles) if s == style]
        result[style] = measure([rows[i] for i in idx], [logps[i] for i in idx], cfg.weighting)
    total = result["all"]
    print(f"model: {path}\nbehavior data: {total['examples']} examples, "
          f"{total['loss_tokens']} loss tokens")
    header = ("subset", "examples", "p-b/token", "p/token", "b/token", "level", "ESS", "W mean",
              "clip lo", "clip hi", "logG clip", "weight share")
    print(" | ".join(header))
    for name in ["all"] + sorted(set(styles)):
        r = result[name]
        for level in LEVELS:
            s = r[level]
            share = s["weight_sum"] / max(total[level]["weight_sum"], 1e-12)
            print(f"{name} | {r['examples']} | {r['delta_mean']:.3f} | "
                  f"{r['student_logprob_per_token']:.3f} | {r['behavior_logprob_per_token']:.3f} | "
                  f"{level} | {s['weight_ess']:.3f} | {s['weight_mean']:.3f} | "
                  f"{s['delta_clip_low_frac']:.3f} | {s['delta_clip_high_frac']:.3f} | "
                  f"{s['log_weight_clip_frac']:.3f} | {share:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    sys.exit(main())
