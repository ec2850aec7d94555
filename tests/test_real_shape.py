"""The real-shape tier: every `+experiment=` preset end to end on random-init stand-ins of its
models (pear_exp/standins.py: the real 152k vocabularies, tokenizers, chat templates,
generation_config.json files, head_dim 128), shrunk by `+budget=check`, with both engines.

    make test-real        # CI runs it; 16 min 12 s on 2 cores, stand-in builds included

Per preset: behavior from a shipped prompt/response file scored by the teacher stand-in, then
PEAR-weighted SFT, GRPO and evaluation through the hf engine; then GRPO and evaluation again from
the same SFT checkpoint through vLLM in the preset's engine dtype (bf16 engine, fp32 trainer) at
tensor_parallel_size 1. The SFT data teaches parity answers "\\boxed{0|1}" to noise models, so
RL sees rewards that are not all equal and really updates, and the weight sync is checked on
real-shape weights. logic_games keeps its knights-and-knaves task, which noise cannot solve: its
groups are kept but its update is zero, and it runs with the hf engine only (its models are
aime_qwen3's, which run through vLLM already); logic_games_shifted adds RL and evaluation on
zebra_puzzles.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pear_exp.standins import standin_dir

pytestmark = pytest.mark.real_shape

DATA = Path(__file__).resolve().parent.parent / "pear_exp" / "tasks" / "data"
PRESETS = {  # experiment -> (student preset, teacher preset)
    "aime_qwen3": ("qwen3_4b_base", "qwen3_32b"),
    "aime_qwen2_5": ("qwen2_5_math_1_5b", "qwen2_5_7b_instruct"),
    "aime_r1_distill": ("r1_distill_qwen_1_5b", "r1_distill_qwen_32b"),
    "logic_games": ("qwen3_4b_base", "qwen3_32b"),
    "logic_games_shifted": ("qwen3_4b_base", "qwen3_32b"),  # RL and evaluation on zebra_puzzles
}


@pytest.fixture(scope="module")
def cache():
    """Stand-ins are cached like the tiny models (PEAR_EXP_CACHE or ~/.cache/pear_exp)."""
    return Path(os.environ.get("PEAR_EXP_CACHE", "~/.cache/pear_exp")).expanduser()


def run(args, cache, cwd):
    env = {**os.environ, "PEAR_EXP_CACHE": str(cache), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-m", "pear_exp", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def records(run_dir: Path, stage: str) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["stage"] == stage]


def changed(before: Path, after: Path) -> float:
    """Largest absolute weight change between two checkpoints."""
    a, b = load_file(before / "model.safetensors"), load_file(after / "model.safetensors")
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.mark.parametrize("experiment", list(PRESETS))
def test_preset_end_to_end_on_standins(experiment, cache, tmp_path):
    student, teacher = PRESETS[experiment]
    common = [
        f"+experiment={experiment}", "+budget=check", "logger=none", f"cache_dir={cache}",
        f"model.path={standin_dir(student, cache)}", f"teacher.path={standin_dir(teacher, cache)}",
        "behavior.source=dataset", f"behavior.dataset={DATA / 'check_sft.jsonl'}",
        "behavior.top_p=1.0",  # scoring existing data needs the full distribution
        # noise models learn the answer format in 20 steps (12 left aime_qwen2_5's padding-free
        # student at NLL 1.29 writing "\\boxed{" only: every reward 0, no update; 20: 0.40)
        "sft.lr=5e-3", "sft.steps=20", "sft.micro_batch_size=8", "rl.micro_batch_size=16",
        "rl.lr=1e-4", "rl.group_size=8",  # 8 groups of 8: some with both rewards
        # noise until then: the base checkpoint writes every generation to its cap
        "rl.max_new_tokens=32", "evaluate.max_new_tokens=32", "evaluate.num_samples=2",
        "task.num_eval=2",
    ]
    games = experiment.startswith("logic_games")
    if games:
        common += ["rl.skip_uniform_groups=false"]
    else:
        common += [f"task.train_set={DATA / 'check_train.jsonl'}"]

    hf_dir = tmp_path / "hf"
    run(common + ["rollout=hf", f"run_dir={hf_dir}"], cache, tmp_path)
    meta = json.loads((hf_dir / "behavior" / "meta.json").read_text())
    assert meta["kept"] == meta["samples"] == 64 and meta["source"] == "dataset"
    sft = records(hf_dir, "sft")
    assert len(sft) == 20 and sft[-1]["sft/nll"] < 0.5 * sft[0]["sft/nll"]  # it learned
    assert set(json.loads((hf_dir / "summary.json").read_text())) == {"base", "sft", "rl"}
    rl = records(hf_dir, "rl")
    assert len(rl) == 2
    if experiment == "logic_games_shifted":  # every checkpoint also on the RL task
        summary = json.loads((hf_dir / "summary.json").read_text())
        assert all(0 <= summary[c]["zebra_puzzles/pass@1"] <= 1 for c in ("base", "sft", "rl"))
        assert len((hf_dir / "evaluate" / "rl_task" / "rl" / "problems.jsonl").read_text()
                   .splitlines()) == 2
    if not games:
        assert any(r["rl/kept_frac"] > 0 for r in rl)  # rewards not all equal: a real update
        assert changed(hf_dir / "sft" / "model", hf_dir / "rl" / "model") > 0

    if games:
        return  # its models run through vLLM in aime_qwen3 already; its task is what it adds
    # vLLM: GRPO and evaluation from the same SFT checkpoint, bf16 engine over an fp32 trainer
    vllm_dir = tmp_path / "vllm"
    for stage in ("behavior", "sft"):
        shutil.copytree(hf_dir / stage, vllm_dir / stage)
    run(common + ["rollout=vllm", "rollout.dtype=bfloat16", "rollout.tensor_parallel_size=1",
                  f"run_dir={vllm_dir}",
                  "stages=[rl,evaluate]"], cache, tmp_path)
    rl = records(vllm_dir, "rl")
    assert len(rl) == 2
    # the exact fingerprint passed after every sync (it stops the run otherwise) and the
    # matched-precision drift stayed under rollout.sync_tolerance
    synced = [r for r in rl if "rl/sync_logprob_diff_mean" in r]
    assert synced and all(r["rl/sync_logprob_diff_mean"] <= 0.25 for r in synced)
    assert any(r["rl/kept_frac"] > 0 for r in rl)
    assert changed(vllm_dir / "sft" / "model", vllm_dir / "rl" / "model") > 0
    assert set(json.loads((vllm_dir / "summary.json").read_text())) == {"base", "sft", "rl"}


def test_standins_have_the_real_vocabulary_template_and_generation_config(cache):
    """Spot checks of the builder against the published checkpoints' files."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    path = standin_dir("qwen2_5_7b_instruct", cache)
    config = AutoConfig.from_pretrained(path)
    assert (config.vocab_size, config.head_dim if hasattr(config, "head_dim") else
            config.hidden_size // config.num_attention_heads) == (152064, 128)
    assert config.tie_word_embeddings is False and config.rope_parameters["rope_theta"] == 1e6
    assert config.num_key_value_heads < config.num_attention_heads  # grouped-query attention
    generation = GenerationConfig.from_pretrained(path)
    assert (generation.repetition_penalty, generation.top_k, generation.temperature,
            generation.top_p) == (1.05, 20, 0.7, 0.8)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer("Hello, world!").input_ids == [
        9707, 11, 1879, 0]

    r1 = standin_dir("r1_distill_qwen_1_5b", cache)
    config = AutoConfig.from_pretrained(r1)
    assert (config.vocab_size, config.rope_parameters["rope_theta"],
            config.max_position_embeddings) == (
        151936, 1e4, 131072)
    tokenizer = AutoTokenizer.from_pretrained(r1)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "1+1?"}],
                                           add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<｜Assistant｜><think>\n") and tokenizer.eos_token_id == 151643

    base = standin_dir("qwen3_4b_base", cache)
    assert AutoTokenizer.from_pretrained(base).eos_token == "<|endoftext|>"
    weights = load_file(Path(base) / "model.safetensors")
    assert weights["model.embed_tokens.weight"].shape == (151936, 256)
    assert weights["model.embed_tokens.weight"].dtype == torch.bfloat16  # as published
    assert "lm_head.weight" not in weights  # tied
