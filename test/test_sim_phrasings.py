"""Instruction phrasings: the family per task, its fixed training / held-out split, the seeded
choice per generated episode, and the `--instructions` file format of `ki-vla eval`."""

import json
import os
import re
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from ki_vla_ros.sim import tasks as T

HELDOUT_FILE = Path(__file__).resolve().parents[1] / "config" / "eval" / "heldout_phrasings.json"


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text))


@pytest.mark.parametrize("name", T.TASK_NAMES)
def test_split_is_disjoint_and_heldout_is_made_of_training_words(name):
    task, family = T.TASKS[name], T.phrasings(name)
    train, held = T.training_phrasings(name), T.heldout_phrasings(name)
    assert family[0] == task.instruction and task.instruction in train
    assert not set(train) & set(held) and set(train) | set(held) == set(family) and len(set(family)) == len(family)
    assert len(held) >= 20 and len(train) >= 6 * len(held)
    train_words = set().union(*map(words, train))
    for p in held:
        assert words(p) <= train_words, p  # new combinations of seen words, no unseen word
    for p in family:  # every phrasing names this task's cube and arm(s), never the other colour
        w = words(p)
        assert task.cube in w and task.other_cube not in w and task.arm in w, p
        assert (task.other_arm in w) == (task.kind == "handover"), p
    synonyms = set(T.ARM_WORDS) | {"grab", "lift", "take", "block", "please", "could"}
    assert synonyms <= train_words and synonyms <= set().union(*map(words, held))
    others = {p for n in T.TASK_NAMES if n != name for p in T.phrasings(n)}
    assert not others & set(family)


def test_heldout_file_is_the_generated_split():
    data = T.read_instruction_file(HELDOUT_FILE)
    assert data == {n: list(T.heldout_phrasings(n)) for n in T.TASK_NAMES}


def test_episode_instruction_is_seeded_and_never_heldout():
    name = "pick_blue_right"
    picks = [T.episode_instruction(name, s) for s in range(400)]
    assert picks == [T.episode_instruction(name, s) for s in range(400)]
    assert not set(picks) & set(T.heldout_phrasings(name)) and set(picks) <= set(T.training_phrasings(name))
    share = picks.count(T.TASKS[name].instruction) / len(picks)
    assert 0.18 < share < 0.32  # CANONICAL_SHARE 0.25 (+ a 1/213 chance of drawing it as a phrasing)
    assert len(set(picks)) > 100
    assert [T.episode_instruction(name, s, canonical_share=1.0) for s in range(5)] == [T.TASKS[name].instruction] * 5
    assert T.episode_instruction("pick_red_left", 3) != T.episode_instruction("pick_red_left", 4)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('["pick up the red cube"]', "expected a non-empty JSON object"),
    ("{}", "expected a non-empty JSON object"),
    ('{"fly_away": ["go"]}', "unknown task 'fly_away'"),
    ('{"pick_red_left": []}', "pick_red_left: expected a non-empty list"),
    ('{"pick_red_left": "grab it"}', "pick_red_left: expected a non-empty list"),
    ('{"pick_red_left": ["grab it", ""]}', "must be non-empty strings"),
])
def test_instruction_file_errors(tmp_path, content, message):
    path = tmp_path / "instr.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        T.read_instruction_file(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="cannot read"):
        T.read_instruction_file(tmp_path / "missing.json")


def test_generated_bags_carry_the_seeded_phrasing(tmp_path):
    from ki_vla_ros.sim.generate import generate_dataset
    from ki_vla_ros.sim.record import read_bag

    summary = generate_dataset(tmp_path, episodes_per_task=2, seed=7, image_size=32, tasks=["pick_red_left"],
                               vlm_scenes=0, log=lambda *a: None)
    assert summary["phrasings"] == "train"
    rows = [json.loads(line) for line in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [7, 8]
    for r in rows:
        assert r["instruction"] == T.episode_instruction("pick_red_left", r["seed"])
        assert r["canonical_instruction"] == "pick up the red cube with the left arm"
        assert read_bag(tmp_path / r["bag"])["instruction"] == r["instruction"]
    assert rows[0]["instruction"] != rows[1]["instruction"]


def test_generated_recovery_demonstrations_record_the_expert_not_the_executed_commands(tmp_path):
    from ki_vla_ros.sim.expert import rollout
    from ki_vla_ros.sim.generate import generate_dataset
    from ki_vla_ros.sim.record import read_bag

    summary = generate_dataset(tmp_path, episodes_per_task=1, seed=7, image_size=32, tasks=["pick_red_left"],
                               vlm_scenes=0, action_noise=0.03, log=lambda *a: None)
    row = json.loads((tmp_path / "episodes.jsonl").read_text().splitlines()[0])
    assert summary["action_noise"] == row["action_noise"] == 0.03
    bag = read_bag(tmp_path / row["bag"])
    clean = rollout("pick_red_left", row["seed"], cameras=())
    assert np.allclose(bag["actions"], clean.actions, atol=1e-9)
    assert np.abs(bag["joint_positions"] - clean.joint_positions).max() > 0.02
