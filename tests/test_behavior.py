"""Behavior data: both sources store the right log-probs, and bad data is refused by row."""

import json
import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from pear_exp.config import BehaviorConfig, BehaviorSource
from pear_exp.losses import token_logprobs
from pear_exp.data import make_row, validate_rows
from pear_exp.errors import DataError
from pear_exp.models import prompt_ids, response_ids
from pear_exp.rollout.hf import HFEngine
from pear_exp.stages import behavior
from pear_exp.stages.behavior import example
from pear_exp.tiny import build_char_tokenizer
from pear_exp.tasks.base import Problem
from pear_exp.tasks.countdown import Countdown
from pear_exp.tasks.math import INSTRUCTION


def teacher_forced(model, row, temperature=1.0):
    ids = torch.tensor([row["input_ids"]])
    with torch.no_grad():
        logp = token_logprobs(model(ids).logits, ids, temperature)[0]
    return torch.tensor([v if m else 0.0 for v, m in zip(logp.tolist(), row["loss_mask"])])


def chat(tokenizer):
    return lambda prompt: prompt_ids(tokenizer, prompt)


def good_rows(tokenizer, n=3):
    rows = []
    for i in range(n):
        p = prompt_ids(tokenizer, f"Make {i} from 1 2 3")
        r = response_ids(tokenizer, f"1+2={3 + i}")
        rows.append(example(f"p{i}", f"Make {i} from 1 2 3", f"1+2={3 + i}",
                            make_row(p, r, [-0.5] * len(r))))
    return rows


def test_teacher_sampling_stores_the_sampling_distributions_logprobs(model, tokenizer, tmp_path):
    task = Countdown()
    problems = task.sample_problems(3, seed=0)
    cfg = BehaviorConfig(samples_per_prompt=2, temperature=0.8, max_new_tokens=10,
                         keep_only_correct=False)
    rows, stats = behavior.sample_from_teacher(HFEngine(model, tokenizer, 4), tokenizer, tokenizer,
                                               problems, task, cfg, None, 0)
    data, meta = behavior.finish(rows, stats, cfg, "t", tmp_path)
    assert len(data) == 6 and meta["samples"] == 6 and meta["temperature"] == 0.8
    assert json.loads((tmp_path / "meta.json").read_text())["teacher"] == "t"
    for row in data:
        torch.testing.assert_close(torch.tensor(row["behavior_logprobs"]),
                                   teacher_forced(model, row, 0.8), atol=1e-4, rtol=1e-4)


def test_keep_only_correct_filters_by_the_verifier(model, tokenizer):
    task = Countdown()
    problems = task.sample_problems(4, seed=1)
    cfg = BehaviorConfig(samples_per_prompt=2, max_new_tokens=6, keep_only_correct=True)
    rows, stats = behavior.sample_from_teacher(HFEngine(model, tokenizer, 8), tokenizer, tokenizer,
                                               problems, task, cfg, None, 0)
    # a random-weight model writes no valid 6-token answer: every sample is rejected
    assert rows == [] and stats["samples"] == 8 and stats["teacher_accuracy"] == 0.0
    with pytest.raises(DataError, match="kept no examples"):
        behavior.finish(rows, stats, cfg, "t", Path("unused"))


def test_scoring_an_existing_dataset_is_teacher_forced(model, tokenizer, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"Make {i} from 1 2 3", "response": "1+2=3"})
                              for i in range(3)))
    cfg = BehaviorConfig(source=BehaviorSource.dataset, dataset=str(path), temperature=1.5)
    rows, _ = behavior.score_dataset(model, tokenizer, tokenizer, str(path), cfg, 2, None,
                                     eval_problems=[])
    assert len(rows) == 3
    for row in rows:
        assert row["input_ids"][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
        torch.testing.assert_close(torch.tensor(row["behavior_logprobs"]),
                                   teacher_forced(model, row, 1.5), atol=1e-4, rtol=1e-4)
    validate_rows(Dataset.from_list(rows), tokenizer, chat(tokenizer), 256, "scored")


def test_scoring_stores_the_teachers_topk_at_the_scoring_temperature(model, tokenizer, tmp_path):
    """Independent route: the top-k of the teacher's full log-softmax at 1.5, per response
    token, from a plain forward pass."""
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"Make {i} from 1 2 3", "response": "1+2=3"})
                              for i in range(3)))
    cfg = BehaviorConfig(source=BehaviorSource.dataset, dataset=str(path), temperature=1.5,
                         top_k=3)
    rows, _ = behavior.score_dataset(model, tokenizer, tokenizer, str(path), cfg, 2, None,
                                     eval_problems=[])
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            logq = torch.log_softmax(model(ids).logits[0, :-1] / 1.5, -1)  # predicts 1..n-1
        start = row["loss_mask"].index(1)
        values, top = logq[start - 1 :].topk(3, -1)
        assert row["behavior_topk_ids"].tolist() == top.tolist()
        torch.testing.assert_close(torch.from_numpy(row["behavior_topk_logprobs"]), values,
                                   atol=1e-5, rtol=1e-5)
    validate_rows(Dataset.from_list(rows), tokenizer, chat(tokenizer), 256, "scored",
                  need_topk=True)


@pytest.mark.parametrize("corrupt, message", [
    (lambda r: r["behavior_topk_ids"].pop(), "3 top-k id lists .* 4 response tokens"),
    (lambda r: r["behavior_topk_ids"][0].append(1), "has 3 top-k ids and 2 log-probs"),
    (lambda r: r["behavior_topk_ids"][1].__setitem__(0, 10_000), "outside the student's"),
    (lambda r: r["behavior_topk_logprobs"][2].__setitem__(0, -0.01), "not log-probabilities"),
])
def test_bad_topk_rows_are_refused_naming_the_row(tokenizer, corrupt, message):
    rows = []
    for i in range(2):
        p = prompt_ids(tokenizer, f"Make {i} from 1 2 3")
        r = response_ids(tokenizer, "1+2")  # 4 tokens with the end of turn
        top = ([[5, 6]] * len(r), [[-0.5, -1.5]] * len(r))
        rows.append(example(f"p{i}", f"Make {i} from 1 2 3", "1+2", make_row(p, r, [-0.5] * len(r), top)))
    rows = json.loads(json.dumps(rows))  # no shared inner lists
    validate_rows(Dataset.from_list(rows), tokenizer, chat(tokenizer), 256, "d", need_topk=True)
    corrupt(rows[1])
    with pytest.raises(DataError, match=rf"d: row 1 \(problem p1\): .*{message}"):
        validate_rows(Dataset.from_list(rows), tokenizer, chat(tokenizer), 256, "d", need_topk=True)
    plain = Dataset.from_list(good_rows(tokenizer))
    with pytest.raises(DataError, match="sft.base_loss=kl needs .* behavior.top_k > 0"):
        validate_rows(plain, tokenizer, chat(tokenizer), 256, "d", need_topk=True)


def test_scoring_refuses_missing_columns_and_top_p(model, tokenizer, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "x", "response": "y"}))
    cfg = BehaviorConfig(source=BehaviorSource.dataset, dataset=str(path))
    with pytest.raises(DataError, match=r"bad.jsonl: missing column\(s\) \['prompt'\]"):
        behavior.score_dataset(model, tokenizer, tokenizer, str(path), cfg, 2, None,
                               eval_problems=[])
    cfg.top_p = 0.9
    with pytest.raises(DataError, match="top_p"):
        behavior.score_dataset(model, tokenizer, tokenizer, str(path), cfg, 2, None,
                               eval_problems=[])


def test_teacher_with_another_tokenizer_is_refused(model, tokenizer):
    other = build_char_tokenizer()
    other.add_tokens(["<extra>"])
    with pytest.raises(DataError, match="tokenizer differs"):
        behavior.check_same_tokenizer(other, tokenizer)


def test_valid_rows_pass(tokenizer):
    validate_rows(Dataset.from_list(good_rows(tokenizer)), tokenizer, chat(tokenizer), 256, "d")


@pytest.mark.parametrize("corrupt, message", [
    (lambda r: r.update(behavior_logprobs=r["behavior_logprobs"][:-1]), "behavior log-probs"),
    (lambda r: r["behavior_logprobs"].__setitem__(-1, math.nan), "not a finite"),
    (lambda r: r["behavior_logprobs"].__setitem__(-1, math.inf), "not a finite"),
    (lambda r: r["behavior_logprobs"].__setitem__(-1, 0.7), "not a finite"),
    (lambda r: r["input_ids"].__setitem__(-2, 10_000), "outside the student's vocabulary"),
    (lambda r: r["input_ids"].__setitem__(2, 50), "prompt token ids differ"),
    (lambda r: r.update(response="something else"), "decode to"),
    (lambda r: r.update(loss_mask=[0] * len(r["loss_mask"])), "at least one 1"),
])
def test_bad_rows_are_refused_naming_the_row(tokenizer, corrupt, message):
    rows = good_rows(tokenizer)
    corrupt(rows[1])
    with pytest.raises(DataError, match=rf"d: row 1 \(problem p1\): .*{message}"):
        validate_rows(Dataset.from_list(rows), tokenizer, chat(tokenizer), 256, "d")


def test_missing_column_and_overlong_rows_are_refused(tokenizer):
    rows = good_rows(tokenizer)
    with pytest.raises(DataError, match=r"missing column\(s\) \['behavior_logprobs'\]"):
        validate_rows(Dataset.from_list(rows).remove_columns("behavior_logprobs"), tokenizer,
                      chat(tokenizer), 256, "d")
    with pytest.raises(DataError, match="row 0 .* exceeds sft.max_seq_len=10"):
        validate_rows(Dataset.from_list(rows), tokenizer, chat(tokenizer), 10, "d")


# ---------------------------------------------------------------------------------------------
# Scoring a dataset: evaluation problems removed (issue 12, 2.3), bounded micro-batches (2.7)


def write_jsonl(path, prompts, response="1+2=3"):
    path.write_text("\n".join(json.dumps({"prompt": p, "response": response}) for p in prompts))
    return path


def test_scoring_removes_evaluation_problems_and_counts_them(model, tokenizer, tmp_path):
    aime = Problem("aime/1", f"Find the number of pairs $(a, b)$.\n{INSTRUCTION}", "7")
    game = Problem("countdown/1", "Make 15 from 3 7 12", "12-7=5")
    prompts = [
        "Find the number of pairs $(a, b)$.",                                # bare problem text
        f"find the number  of pairs $(a,b)$.\n\n{INSTRUCTION}",              # whitespace and case
        "Solve this. Find the number of pairs $(a, b)$. Box the answer.",   # wrapped
        "MAKE 15 FROM 3 7 12",
        "Find the number of triples $(a, b, c)$.",                           # kept from here on
        "Make 16 from 3 7 12",
        "Make 15 from 3 7 11",
        "Make 15 from 3 7 123",  # a longer number is another problem (word boundaries)
    ]
    path = write_jsonl(tmp_path / "data.jsonl", prompts)
    cfg = BehaviorConfig(source=BehaviorSource.dataset, dataset=str(path))
    rows, stats = behavior.score_dataset(model, tokenizer, tokenizer, str(path), cfg, 8, None,
                                         eval_problems=[aime, game])
    assert [r["prompt"] for r in rows] == prompts[4:]
    assert stats == {"samples": 8, "kept": 4, "eval_removed": 4}
    behavior.finish(rows, stats, cfg, "t", tmp_path)
    assert json.loads((tmp_path / "meta.json").read_text())["eval_removed"] == 4


def test_pipeline_passes_the_evaluation_problems_to_scoring(tokenizer, tmp_path, capsys):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pear_exp.__main__ import CONF_DIR
    from pear_exp.config import register_configs
    from pear_exp.tasks import make_task, split
    from tests.conftest import make_tiny_model

    make_tiny_model(tokenizer).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = OmegaConf.to_object(compose(config_name="config", overrides=[
            "+experiment=smoke", f"model.path={tmp_path / 'tiny'}",
            f"teacher.path={tmp_path / 'tiny'}", "behavior.source=dataset",
            f"behavior.dataset={tmp_path / 'data.jsonl'}"]))
    train, held_out = split(cfg.task, cfg.cache_dir)
    write_jsonl(tmp_path / "data.jsonl", [p.prompt for p in held_out[:3] + train[:5]])
    behavior.make_data(cfg, tmp_path / "behavior", train, held_out, make_task(cfg.task, cfg.cache_dir))
    meta = json.loads((tmp_path / "behavior" / "meta.json").read_text())
    assert (meta["samples"], meta["kept"], meta["eval_removed"]) == (8, 5, 3)
    assert "removed 3 rows that hold evaluation problems" in capsys.readouterr().out


def test_scoring_runs_in_micro_batches_within_the_token_budget(model, tokenizer, tmp_path):
    prompts = [f"Make {i} from 1 2 3" for i in range(7)]
    responses = ["1+2=3" * k for k in (1, 9, 2, 5, 1, 7, 3)]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p, "response": r})
                              for p, r in zip(prompts, responses)))
    shapes = []
    hook = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True)
    cfg = BehaviorConfig(source=BehaviorSource.dataset, dataset=str(path), temperature=0.8)
    try:
        rows, _ = behavior.score_dataset(model, tokenizer, tokenizer, str(path), cfg, 3, None,
                                         eval_problems=[], max_tokens=100)
    finally:
        hook.remove()
    lengths = [len(r["input_ids"]) for r in rows]
    assert sum(n for n, _ in shapes) == 7 and len(shapes) > 2
    for n, width in shapes:
        assert n <= 3 and (n * width <= 100 or n == 1)
    assert max(lengths) > 100 / 2  # some rows do not fit twice into the budget
    for row in rows:
        torch.testing.assert_close(torch.tensor(row["behavior_logprobs"]),
                                   teacher_forced(model, row, 0.8), atol=1e-4, rtol=1e-4)


def test_vllm_scores_only_at_temperature_1(model, tokenizer, tmp_path, monkeypatch):
    """rollout=vllm scores a dataset through the engine at behavior.temperature 1 and through the
    teacher's transformers forward otherwise (vLLM's prompt log-probs are of temperature 1)."""
    import types

    from pear_exp.config import Engine, RolloutConfig

    model.save_pretrained(tmp_path)
    started = []
    monkeypatch.setattr(behavior, "make_engine", lambda *a, **k: started.append(k) or "engine")
    for temperature, expected in ((1.0, "engine"), (0.7, type(model))):
        cfg = types.SimpleNamespace(
            rollout=RolloutConfig(engine=Engine.vllm), seed=0,
            teacher=types.SimpleNamespace(dtype="float32", trust_remote_code=False),
            behavior=BehaviorConfig(source=BehaviorSource.dataset, temperature=temperature,
                                    top_k=3))
        scorer = behavior.scorer_for(cfg, str(tmp_path), tokenizer)
        assert scorer == "engine" if expected == "engine" else isinstance(scorer, expected)
    assert started == [dict(policy=False, seed=0, max_logprobs=3,
                            prefill_chunk=behavior.SCORE_TOKENS_VLLM)]
