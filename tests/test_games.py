"""reasoning-gym games as tasks (pear_exp.tasks.games): conventions, fixed scorers, splits, cache."""

from __future__ import annotations

import os
import pickle
from fractions import Fraction

import pytest
import reasoning_gym

from pear_exp.config import GameTaskConfig
from pear_exp.tasks import games as G
from pear_exp.tasks import make_task
from pear_exp.tasks.base import Problem, Task
from pear_exp.tasks.games import GymGame, extract_answer, format_answer, game_entry

TINY_CHAIN = (("min_terms", 2), ("max_terms", 2), ("min_digits", 1), ("max_digits", 1))  # 200 questions


@pytest.fixture(scope="module")
def problems():
    """50 problems per fast game (generated once for the module)."""
    specs = {
        "basic_arithmetic": (),
        "chain_sum": (),
        "spell_backward": (),
        "mini_sudoku": (),
        "countdown": (("min_numbers", 3), ("max_numbers", 4)),
        "game_of_life_halting": (),
        "prime_factorization": (),
        "graph_color": (),  # no gold in reasoning-gym: reference from metadata
        "propositional_logic": (),  # idem
    }
    out = {}
    for name, params in specs.items():
        game = GymGame(name, params=params)
        out[name] = (game, game.sample_problems(50, seed=0))
    return out


# ---------------------------------------------------------------------------- conventions
def test_extract_answer():
    assert extract_answer("think\nanswer: 12\n") == "12"
    assert extract_answer("answer: 1\nno wait\nAnswer: 2") == "2"  # the last marker, any case
    assert extract_answer("steps\nanswer:\n1 2\n3 4\n") == "1 2\n3 4"  # to the end: multi-line
    assert extract_answer("no marker\n42\n\n") == "42"  # fallback: last non-empty line
    assert extract_answer("answer:") == ""
    assert extract_answer("   \n") is None
    assert extract_answer(None) is None  # type: ignore[arg-type]
    assert format_answer("7") == "answer: 7"
    assert format_answer("1 2\n3 4") == "answer:\n1 2\n3 4"


def test_problem_shape(problems):
    game, ps = problems["chain_sum"]
    assert isinstance(game, Task)
    for p in ps:
        assert isinstance(p, Problem)
        hash(p)  # data is hashable
        entry = game_entry(p)
        assert p.id == f"chain_sum-{G._question_hash(entry['question'])}"
        assert p.prompt.startswith(entry["question"].rstrip())
        assert p.prompt.endswith(G.DEFAULT_ANSWER_FORMAT)
        assert p.answer == format_answer(entry["answer"])
        assert game.solutions(p) == [p.answer]
    assert len({p.id for p in ps}) == len(ps)
    assert set(G.DEFAULT_ANSWER_FORMAT) <= set(game.alphabet())


def test_entries_keep_their_types(tmp_path, monkeypatch):
    entry = {
        "question": "q", "answer": None,
        "metadata": {"grid": ((1, 2), (3, 4)), "ints": {0: 1, 5: [2]}, "f": Fraction(3, 4), "s": {1, 2},
                     "l": [1, (2, 3)], "tk": {(1, 2): "a"}},
    }
    game = GymGame("chain_sum", cache_dir=str(tmp_path))
    monkeypatch.setattr(reasoning_gym, "create_dataset", lambda name, size, seed, **kw: [entry] * size)
    (fresh,) = game.sample_problems(1, seed=0)
    (cached,) = game.sample_problems(1, seed=0)  # read back from the cache file
    assert game_entry(fresh) == game_entry(cached) == entry
    assert fresh == cached and hash(fresh) == hash(cached)


# ---------------------------------------------------------------------------- grading
@pytest.mark.parametrize(
    "name", ["basic_arithmetic", "chain_sum", "spell_backward", "mini_sudoku", "countdown",
             "game_of_life_halting", "prime_factorization", "graph_color", "propositional_logic"],
)
def test_gold_scores_one_and_wrong_zero(problems, name):
    game, ps = problems[name]
    assert len(ps) == 50
    assert all(p.answer for p in ps)
    for p in ps:
        assert game.score(p, p.answer) == 1.0, (p.prompt, p.answer)
        assert game.score(p, "Let me think.\n" + p.answer + "\n") == 1.0
        assert game.score(p, "answer: hello") == 0.0
        assert game.score(p, "") == 0.0
    if name not in ("graph_color", "propositional_logic"):  # those accept other valid answers
        for p, q in zip(ps, ps[1:] + ps[:1]):
            if extract_answer(q.answer) != extract_answer(p.answer):
                assert game.score(p, q.answer) == 0.0


def test_countdown_partial_credit_is_not_a_pass(problems):
    game, ps = problems["countdown"]
    lenient = GymGame("countdown", params=game.params, pass_threshold=0.05)
    for p in ps[:20]:
        nums = game_entry(p)["metadata"]["numbers"]
        partial = "answer: " + " + ".join(map(str, nums))  # right numbers; wrong value unless lucky
        if game.raw_score(p, extract_answer(partial)) >= 1.0:
            continue
        assert 0.0 < game.raw_score(p, extract_answer(partial)) < 1.0  # reasoning-gym's partial credit
        assert game.score(p, partial) == 0.0  # threshold 1.0: binary
        assert lenient.score(p, partial) == 1.0
        assert game.score(p, p.answer) == 1.0
    with pytest.raises(ValueError, match="pass_threshold"):
        GymGame("countdown", pass_threshold=0.0)


def test_game_of_life_halting_fixed(problems):
    game, ps = problems["game_of_life_halting"]
    rg = game.raw_score  # ours, not reasoning-gym's (which gives 1.0 to any non-empty answer)
    for p in ps:
        gold = extract_answer(p.answer)
        assert gold in ("True", "False")
        other = "False" if gold == "True" else "True"
        assert game.score(p, "answer: " + other) == 0.0
        assert game.score(p, "answer: maybe") == 0.0
        assert game.score(p, f"answer: {gold.lower()}.") == 1.0  # normalised
        assert rg(p, "1") == 0.0


def test_prime_factorization_never_raises(problems):
    game, ps = problems["prime_factorization"]
    for p in ps:
        assert game.score(p, "answer: hello") == 0.0
        assert game.score(p, "answer: 2 × x") == 0.0
        assert game.score(p, p.answer) == 1.0


def test_puzzle24_checks_the_numbers():
    game = GymGame("puzzle24")
    (p,) = game.sample_problems(1, seed=0)
    nums = sorted(game_entry(p)["metadata"]["numbers"])
    assert game.score(p, p.answer) == 1.0
    foreign = "answer: 8*3*1*1" if nums != [1, 1, 3, 8] else "answer: 6*4*1*1"  # 24, other numbers
    assert game.score(p, foreign) == 0.0


def test_score_never_raises(problems):
    game, ps = problems["chain_sum"]
    p = ps[0]
    assert game.score(p, None) == 0.0  # type: ignore[arg-type]
    assert game.score(p, "answer: " + "9" * 100_000) == 0.0  # over the length cap
    assert game.score(Problem(id="x", prompt="", answer="", data=()), "answer: 1") == 0.0
    assert game.score(Problem(id="x", prompt="", answer="", data=("{not json",)), "answer: 1") == 0.0


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("name", ["boxnet", "rush_hour", "composite"])
def test_refused_games(name):
    with pytest.raises(ValueError, match=name):
        GymGame(name)


def test_no_gold_games_with_reference_are_allowed():
    game = GymGame("rubiks_cube")
    for p in game.sample_problems(3, seed=0):
        assert game_entry(p)["answer"] is None
        assert game.score(p, p.answer) == 1.0
        assert game.score(p, "answer: U") == 0.0


def test_unknown_game_and_bad_params():
    with pytest.raises(ValueError, match="chain_summ.*available_games"):
        GymGame("chain_summ")
    assert "chain_sum" in G.available_games() and "boxnet" not in G.available_games()
    with pytest.raises(ValueError, match="chain_sum"):
        GymGame("chain_sum", params=(("no_such_field", 1),))
    with pytest.raises(ValueError, match="seed"):
        GymGame("chain_sum", params=(("seed", 1),))
    with pytest.raises(ValueError, match="answer:"):
        GymGame("chain_sum", answer_format="Reply with the number.")


# ---------------------------------------------------------------------------- splits
def test_split_disjoint_and_deterministic():
    game = GymGame("chain_sum", params=TINY_CHAIN)  # 200 distinct questions: collisions are certain
    train, ev = game.split(100, 60, seed=3)
    assert len(train) == 100 and len(ev) == 60
    tr_ids, ev_ids = {p.id for p in train}, {p.id for p in ev}
    assert len(tr_ids) == 100 and len(ev_ids) == 60 and not tr_ids & ev_ids
    norm = lambda p: " ".join(game_entry(p)["question"].split())  # noqa: E731
    assert not {norm(p) for p in train} & {norm(p) for p in ev}
    assert game.split(100, 60, seed=3) == (train, ev)
    assert game.split(100, 60, seed=4) != (train, ev)
    s = game.sample_problems(30, seed=0, exclude=ev_ids)
    assert len(s) == 30 and not {p.id for p in s} & ev_ids
    assert game.sample_problems(30, seed=0, exclude=ev_ids) == s
    with pytest.raises(ValueError, match="too small"):
        game.sample_problems(300, seed=0)


# ---------------------------------------------------------------------------- cache
def test_cache_is_used(tmp_path, monkeypatch):
    game = GymGame("chain_sum", cache_dir=str(tmp_path))
    calls = []
    real = reasoning_gym.create_dataset

    def counting(name, **kw):
        calls.append((name, kw.get("size"), kw.get("seed")))
        return real(name, **kw)

    monkeypatch.setattr(reasoning_gym, "create_dataset", counting)
    train, ev = game.split(40, 20, seed=7)
    assert calls, "first call must generate"
    files = os.listdir(tmp_path)
    assert files and all(f.endswith(".pkl") and not f.startswith(".tmp") for f in files)
    with open(tmp_path / files[0], "rb") as f:
        header = pickle.load(f)["key"]
    assert header["name"] == "chain_sum" and header["reasoning_gym"] == G.rg_version()
    n_calls = len(calls)
    assert game.split(40, 20, seed=7) == (train, ev)
    assert len(calls) == n_calls, "second call must read the cache"
    # a separate instance with the same key reads it too; without a cache it regenerates the same
    assert GymGame("chain_sum", cache_dir=str(tmp_path)).split(40, 20, seed=7) == (train, ev)
    assert len(calls) == n_calls
    assert GymGame("chain_sum").split(40, 20, seed=7) == (train, ev)
    assert len(calls) > n_calls
    # a corrupted file is regenerated, not trusted
    for f in files:
        (tmp_path / f).write_text("garbage\n")
    n_calls = len(calls)
    assert game.split(40, 20, seed=7) == (train, ev)
    assert len(calls) > n_calls


def test_make_task_caches_games_under_the_runs_cache_dir(tmp_path):
    game = make_task(GameTaskConfig(game="chain_sum", game_params={"max_terms": 3}), tmp_path)
    assert game == GymGame("chain_sum", params=(("max_terms", 3),), cache_dir=str(tmp_path / "games"))
    game.sample_problems(2, seed=0)
    assert os.listdir(tmp_path / "games")
    with pytest.raises(ValueError, match="task.game"):
        make_task(GameTaskConfig(), tmp_path)


def test_batched_grading_maps_score(problems):
    game, ps = problems["chain_sum"]
    responses = [ps[0].answer, "answer: hello", "   \n", ps[3].answer]
    assert game.score_many(ps[:4], responses) == [game.score(p, r) for p, r in zip(ps, responses)]
    assert game.classify_many(ps[:4], responses) == ["correct", "wrong", "no_answer", "correct"]
    with pytest.raises(ValueError):
        game.score_many(ps[:2], responses)
