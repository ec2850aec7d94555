"""Peak GPU memory per stage against plan mode's estimate, and tokens/s, for one preset on a
full-size random-init stand-in of its student (pear_exp/standins.py), with the hf engine.

    python experiments/gpu_check/check.py --experiment aime_qwen3 --preset qwen3_4b_base \
        --full-size --seq 8192 --out /tmp/gpu_check

It runs behavior (teacher-forced scoring of a synthetic prompt/response file whose rows are
exactly --seq tokens long, the length plan mode assumes) -> SFT -> GRPO through the pipeline
itself, with the preset's precision (fp32 master weights, bf16 autocast), gradient checkpointing
and chunked log-probs, `+budget=check` counts, the stand-in as its own teacher, and RL updates
that run even when every reward is 0 (rl.skip_uniform_groups=false), so each stage's peak is a
real forward/backward/AdamW step at the planned lengths. Peaks are torch.cuda's
max_memory_allocated / max_memory_reserved over each stage (reset between stages); the estimate
is pear_exp.plan.memory_rows' total for the same configuration on 1 GPU. Without a GPU it runs
the same path on the CPU (small stand-in, no peaks): a dry run of the script.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pear_exp import pipeline, plan, standins
from pear_exp.__main__ import CONF_DIR
from pear_exp.config import Config, register_configs
from pear_exp.models import load_tokenizer, prompt_ids
from pear_exp.stages import behavior, rl, sft

GiB = 2**30


def synthetic_rows(tokenizer, n: int, seq: int) -> list[dict]:
    """Prompt/response rows of exactly `seq` tokens with the student's chat template: " hello" is
    one token of Qwen's vocabulary, so the response length is exact."""
    rows = []
    for i in range(n):
        prompt = f"Say hello {i} times."
        room = seq - len(prompt_ids(tokenizer, prompt)) - 1  # the end-of-turn token
        rows.append({"id": str(i), "prompt": prompt, "response": " hello" * room})
    return rows


def measured(name: str, fn, peaks: dict):
    def wrapper(*args, **kwargs):
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        out = fn(*args, **kwargs)
        peaks[name] = {"seconds": time.perf_counter() - started}
        if torch.cuda.is_available():
            peaks[name]["allocated_gib"] = torch.cuda.max_memory_allocated() / GiB
            peaks[name]["reserved_gib"] = torch.cuda.max_memory_reserved() / GiB
        return out
    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiment", default="aime_qwen3")
    ap.add_argument("--preset", default="qwen3_4b_base")
    ap.add_argument("--full-size", action="store_true")
    ap.add_argument("--seq", type=int, default=8192, help="tokens per SFT row")
    ap.add_argument("--rl-new-tokens", type=int, default=1024)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "cache"
    started = time.perf_counter()
    path = standins.standin_dir(args.preset, cache, full_size=args.full_size,
                                device="cuda" if cuda else "cpu")
    build_seconds = time.perf_counter() - started
    data = args.out / "rows.jsonl"
    tokenizer = load_tokenizer(str(path))
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows(tokenizer, 16, args.seq)))
    overrides = [
        f"+experiment={args.experiment}", "+budget=check", f"model@teacher={args.preset}",
        f"model.path={path}", f"teacher.path={path}", "rollout=hf", "logger=none",
        "task=countdown", "stages=[behavior,sft,rl]", f"cache_dir={cache}",
        "behavior.source=dataset", f"behavior.dataset={data}", "behavior.top_p=1.0",
        f"behavior.max_new_tokens={args.seq - 64}", f"sft.max_seq_len={args.seq}",
        f"rl.max_new_tokens={args.rl_new_tokens}", "rl.skip_uniform_groups=false",
        "rl.eval_every=0", "rl.checkpoint_every=0", "sft.checkpoint_every=0",
        *args.overrides,
    ]
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        dict_cfg = compose("config", overrides=overrides)
    cfg: Config = OmegaConf.to_object(dict_cfg)

    student, teacher = plan.model_plan("student", cfg.model), plan.model_plan("teacher", cfg.teacher)
    gpu_bytes, gpu_name = plan.gpu_memory_bytes()
    estimate = {row.stage: row.per_world[0] / GiB
                for row in plan.memory_rows(cfg, student, teacher, gpu_bytes, [1])
                if row.term == "total"}

    peaks: dict = {}
    behavior.run = measured("behavior", behavior.run, peaks)  # pipeline calls stage.run
    sft.run = measured("sft", sft.run, peaks)
    rl.run = measured("rl", rl.run, peaks)
    run_dir = args.out / "run"
    pipeline.run(cfg, run_dir, OmegaConf.to_container(dict_cfg, resolve=True), {})

    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    def mean_of(stage, key, skip_first=True):
        values = [r[f"{stage}/{key}"] for r in lines if f"{stage}/{key}" in r]
        values = values[1:] if skip_first and len(values) > 1 else values
        return sum(values) / len(values) if values else None
    result = {
        "gpu": gpu_name, "torch": torch.__version__, "experiment": args.experiment,
        "preset": args.preset, "parameters": student.params, "seq": args.seq,
        "build_seconds": build_seconds, "estimate_gib": estimate, "peaks": peaks,
        "sft_loss_tokens_per_s": mean_of("sft", "loss_tokens_per_s"),
        "rl_rollout_tokens_per_s": mean_of("rl", "rollout_tokens_per_s", skip_first=False),
        "rl_train_tokens_per_s": mean_of("rl", "train_tokens_per_s", skip_first=False),
        "overrides": overrides,
    }
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    print(f"{gpu_name}: {args.preset} ({student.params:,} parameters), rows of {args.seq} tokens")
    print("| stage | plan estimate (GiB) | peak allocated (GiB) | peak reserved (GiB) | seconds |")
    print("|---|---|---|---|---|")
    for stage in ("behavior", "sft", "rl"):
        p = peaks.get(stage, {})
        print(f"| {stage} | {estimate.get(stage, float('nan')):.1f} | "
              f"{p.get('allocated_gib', float('nan')):.1f} | {p.get('reserved_gib', float('nan')):.1f}"
              f" | {p.get('seconds', float('nan')):.0f} |")
    print(json.dumps({k: result[k] for k in ("sft_loss_tokens_per_s", "rl_rollout_tokens_per_s",
                                             "rl_train_tokens_per_s")}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
