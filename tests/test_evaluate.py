"""Evaluation arithmetic on scripted responses, with every number worked out by hand."""

import pytest

from pear_exp.config import EvalConfig
from pear_exp.rollout import Completion
from pear_exp.stages.evaluate import evaluate_model, majority_correct, vote_groups
from pear_exp.tasks.countdown import Countdown
from pear_exp.tasks.base import Problem
from pear_exp.tasks.math import MathTask


class ScriptedEngine:
    """Returns fixed responses (the thing under test is the scoring, not generation)."""

    def __init__(self, tokenizer, sampled: list[list[str]], greedy: list[str], truncated=()):
        self.tok, self.sampled, self.greedy, self.truncated = tokenizer, sampled, greedy, truncated

    def completion(self, text):
        ids = self.tok.encode(text, add_special_tokens=False)
        if text in self.truncated:  # log-probs summing to -1 per completion
            return Completion(ids, [-1 / len(ids)] * len(ids), "length")
        eot = self.tok.convert_tokens_to_ids("<|im_end|>")
        return Completion(ids + [eot], [-1 / (len(ids) + 1)] * (len(ids) + 1), "stop")

    def generate(self, prompts, *, n, temperature, **kwargs):
        if temperature == 0:
            return [[self.completion(t)] for t in self.greedy]
        assert all(len(s) == n for s in self.sampled)
        return [[self.completion(t) for t in s] for s in self.sampled]

    def sync_weights(self, model):
        pass


def test_majority_vote():
    # groups: the earliest sample holding the same answer; None: did not answer (no vote)
    assert vote_groups(["5", "6", "6"], ["correct", "wrong", "wrong"]) == [0, 1, 1]
    assert majority_correct([0, 1, 1], ["correct", "wrong", "wrong"]) is False
    assert majority_correct([0, 1, 0], ["correct", "wrong", "correct"]) is True
    assert majority_correct([0, 1], ["wrong", "correct"]) is False  # tie: the earliest group
    assert majority_correct([None, None], ["no_answer", "truncated"]) is False
    # truncated, timed-out and unanswered samples do not vote, whatever they hold
    labels = ["timeout", "truncated", "wrong", "no_answer"]
    assert vote_groups(["5", "5", "6", None], labels) == [None, None, 2, None]
    assert majority_correct([None, None, 2, None], labels) is False
    # with an equivalence, only distinct wrong answers are compared; correct ones are one group
    asked = []

    def equivalent(pairs):
        asked.extend(pairs)
        return [{a, b} == {"0.5", "1/2"} for a, b in pairs]

    answers = ["0.5", "2", "1/2", "0.5", "x", "y"]
    labels = ["wrong", "wrong", "wrong", "wrong", "correct", "correct"]
    assert vote_groups(answers, labels, equivalent) == [0, 1, 0, 0, 4, 4]
    assert sorted(asked) == [("0.5", "1/2"), ("0.5", "2"), ("2", "1/2")]


def test_evaluate_model_hand_computed(tokenizer):
    task = Countdown()
    p1 = Problem("countdown-3-7-12-15", "Make 15 from 3 7 12", "", ((3, 7, 12), 15))
    p2 = Problem("countdown-2-3-4-24", "Make 24 from 2 3 4", "", ((2, 3, 4), 24))
    sampled = [
        # p1: right, right (another expression), wrong, no answer line
        ["answer: (12-7)*3", "answer: 3*(12-7)", "answer: 12+7-3", "I give up"],
        # p2: wrong, right, wrong (same wrong twice), truncated right answer
        ["answer: 2+3+4", "answer: 2*3*4", "answer: 2+3+4", "answer: 4*3*2"],
    ]
    engine = ScriptedEngine(tokenizer, sampled, ["answer: 12-7", "answer: 2*3*4"],
                            truncated=("answer: 4*3*2",))
    summary, rows = evaluate_model(engine, tokenizer, [p1, p2], task, EvalConfig(num_samples=4),
                                   system_prompt=None, seed=0, label="x")
    assert [r["correct"] for r in rows] == [2, 1]
    assert [r["no_answer"] for r in rows] == [1, 1]  # "I give up" and the truncated one
    # pass@1 = mean(2/4, 1/4); pass@2 = mean(1 - C(2,2)/C(4,2), 1 - C(3,2)/C(4,2)) = mean(5/6, 1/2)
    assert summary["pass@1"] == pytest.approx((0.5 + 0.25) / 2)
    assert summary["pass@2"] == pytest.approx((5 / 6 + 0.5) / 2)
    assert summary["pass@4"] == pytest.approx(1.0)
    # maj@4: p1 answers all distinct -> the first, right; p2 "2+3+4" twice -> wrong
    assert summary["maj@4"] == pytest.approx(0.5)
    assert summary["maj@1"] == pytest.approx(0.5)  # first samples: right, wrong
    assert summary["greedy"] == pytest.approx(0.5)
    assert summary["no_answer_frac"] == pytest.approx(2 / 8)
    # 8 sampled completions, each summing to log-prob -1: 8 / (their tokens), counted here from
    # the texts (+1 end-of-turn token for the 7 that stopped)
    tokens = sum(len(tokenizer.encode(t, add_special_tokens=False)) for s in sampled for t in s)
    assert summary["sample_nll"] == pytest.approx(8 / (tokens + 7))


def test_a_missing_sample_is_an_error(tokenizer):
    class Short(ScriptedEngine):
        def generate(self, prompts, *, n, temperature, **kwargs):
            return [[self.completion("answer: 1")] * (n - 1) for _ in prompts]

    p = Problem("countdown-3-7-12-15", "Make 15 from 3 7 12", "", ((3, 7, 12), 15))
    with pytest.raises(RuntimeError, match="got 3 samples, expected 4"):
        evaluate_model(Short(tokenizer, [], []), tokenizer, [p], Countdown(),
                       EvalConfig(num_samples=4, greedy=False), system_prompt=None, seed=0,
                       label="x")


def test_maj_math_votes_answered_samples_over_equal_answers(tokenizer):
    # gold 1/2: "3", then 1/2 written three ways (all graded correct)
    a = Problem("m/a", "What is 1/2?", "\\frac{1}{2}")
    # gold 5: a truncated "5" first, then "6", "5", "5"
    b = Problem("m/b", "What is 2+3?", "5")
    # gold 7: "7" (correct), then one wrong answer 1/2 written three ways
    c = Problem("m/c", "What is 3+4?", "7")
    halves = ["\\boxed{\\frac12}", "\\boxed{\\dfrac{1}{2}}", "\\boxed{0.5}"]
    sampled = [["\\boxed{3}"] + halves,
               ["so far \\boxed{5}", "\\boxed{6}", "\\boxed{5}", "\\boxed{5}"],
               ["\\boxed{7}"] + halves]
    engine = ScriptedEngine(tokenizer, sampled, [], truncated=("so far \\boxed{5}",))
    summary, rows = evaluate_model(engine, tokenizer, [a, b, c], MathTask(timeout=10.0),
                                   EvalConfig(num_samples=4, greedy=False),
                                   system_prompt=None, seed=0, label="x")
    # a: k=1 "3"; k=2 "3" vs 1/2, tie -> "3", the earliest; k=4 1/2 x3 -> right
    # b: k=1 nothing answered; k=2 "6"; k=4 "5" x2 vs "6" -> right (the truncated 5 has no vote)
    # c: k=1 "7"; k=2 tie -> "7"; k=4 the wrong 1/2 x3 -> wrong
    assert [r["maj"] for r in rows] == [{1: False, 2: False, 4: True},
                                        {1: False, 2: False, 4: True},
                                        {1: True, 2: True, 4: False}]
    maj = (summary["maj@1"], summary["maj@2"], summary["maj@4"])
    assert maj == pytest.approx((1 / 3, 1 / 3, 2 / 3))


def test_data_nll_is_the_mean_over_loss_tokens_of_a_plain_forward():
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from pear_exp.data import make_row
    from pear_exp.stages.evaluate import data_nll

    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, head_dim=16, intermediate_size=64))
    rows = [make_row([1, 2, 3], [4, 5]), make_row([6, 7], [8, 9, 10, 11]), make_row([12], [13])]
    total, tokens = 0.0, 0
    for row in rows:  # one row at a time, no padding: log_softmax of the logits one step back
        ids = torch.tensor([row["input_ids"]])
        logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
        for t, on in enumerate(row["loss_mask"]):
            if on:
                total -= logp[t - 1, ids[0, t]].item()
                tokens += 1
    assert tokens == 7
    # padded batches of up to 2 rows (rows of different lengths) give the same mean
    assert data_nll(model, rows, pad_id=0, max_rows=2) == pytest.approx(total / tokens, rel=1e-5)
