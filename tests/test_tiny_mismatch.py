"""The designed teacher/student mismatch knobs: Countdown response styles and the tiny models'
pretraining mixes (experiments/tiny_mismatch). The defaults must leave the embedded world as it was."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import pytest

from pear_exp import tiny
from pear_exp.config import (
    CountdownTaskConfig, ModelConfig, PretrainData, SolutionStyle, TinyModelConfig,
)
from pear_exp.tiny import build_char_tokenizer
from pear_exp.tasks.base import Problem
from pear_exp.tasks.countdown import Countdown, restyle

RESPONSE = "12-7=5\n5*3=15\nanswer: (12-7)*3"
PROBLEM = Problem(id="countdown-3-7-12-15", prompt="Make 15 from 3 7 12", answer="",
                  data=((3, 7, 12), 15))


def test_restyle_rewrites_steps_and_keeps_the_graded_answer():
    assert restyle(RESPONSE, "steps") == RESPONSE
    assert restyle(RESPONSE, "terse") == "answer: (12-7)*3"
    assert restyle(RESPONSE, "reverse") == "5*3=15\n12-7=5\nanswer: (12-7)*3"
    cd = Countdown()
    for style in ("steps", "terse", "reverse"):
        assert cd.score(PROBLEM, restyle(RESPONSE, style)) == 1.0
    with pytest.raises(ValueError, match="terse"):
        restyle(RESPONSE, "verbose")


def model(**tiny_fields) -> ModelConfig:
    return ModelConfig(name="m", tiny=TinyModelConfig(pretrain_examples=40, seed=3, **tiny_fields))


def test_cache_key_at_the_defaults_is_the_one_before_the_new_fields():
    cfg, task = model(), CountdownTaskConfig()
    old = {k: v for k, v in asdict(cfg.tiny).items()
           if k not in ("solutions_frac", "alt_style", "alt_style_frac")}
    blob = json.dumps({"tiny": old, "task": asdict(task), "version": tiny.BUILD_VERSION},
                      sort_keys=True, default=lambda v: getattr(v, "value", str(v)))
    assert tiny._key(cfg, task) == hashlib.sha256(blob.encode()).hexdigest()[:12]
    assert tiny._key(model(alt_style=SolutionStyle.terse, alt_style_frac=0.5), task) != tiny._key(cfg, task)
    assert tiny._key(model(solutions_frac=0.1), task) != tiny._key(cfg, task)


def responses(cfg: ModelConfig, cache) -> list[str]:
    tok = build_char_tokenizer()
    rows = tiny.pretraining_rows(cfg, CountdownTaskConfig(num_train=50, num_eval=20), tok, cache)
    return [tok.decode([t for t, m in zip(r["input_ids"], r["loss_mask"]) if m],
                       skip_special_tokens=True) for r in rows]


def test_teacher_pretraining_writes_the_chosen_fraction_in_the_other_style(tmp_path):
    steps = responses(model(), tmp_path)
    assert all(r.count("\n") == 2 for r in steps)
    mixed = responses(model(alt_style=SolutionStyle.terse, alt_style_frac=0.5), tmp_path)
    terse = [r for r in mixed if r.startswith("answer:")]
    assert 0 < len(terse) < len(mixed)
    assert all(r.count("\n") == 2 for r in mixed if not r.startswith("answer:"))
    everything = responses(model(alt_style=SolutionStyle.terse, alt_style_frac=1.0), tmp_path)
    assert all(r.startswith("answer:") for r in everything)


def test_student_pretraining_mixes_game_solutions_into_the_domain_corpus(tmp_path):
    cfg = model(pretrain=PretrainData.domain, solutions_frac=0.25, alt_style=SolutionStyle.terse,
                alt_style_frac=1.0)
    tok = build_char_tokenizer()
    rows = tiny.pretraining_rows(cfg, CountdownTaskConfig(num_train=50, num_eval=20), tok,
                                 tmp_path)
    prompts = [tok.decode(r["input_ids"], skip_special_tokens=True) for r in rows]
    game = [p for p in prompts if "Make " in p]
    assert len(rows) == 40 and len(game) == 10
    assert all("answer: " in p and "=" not in p.split("Make ")[1] for p in game)
    plain = model(pretrain=PretrainData.domain)
    assert not any("Make " in tok.decode(r["input_ids"])
                   for r in tiny.pretraining_rows(plain, CountdownTaskConfig(num_train=50, num_eval=20),
                                                  tok, tmp_path))
