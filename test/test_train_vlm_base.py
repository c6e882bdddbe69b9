"""The vision-language base: the `vlm_pretrain` recipe's loss terms, VQA scoring, greedy decoding,
and robot training that starts from the base's model folder."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ki_vla_ros.configio import from_dict, load_config
from ki_vla_ros.data.vlm import VLMRecord
from ki_vla_ros.model import KIVLA, ModelConfig
from ki_vla_ros.model.masks import PREFIX, TEXT
from ki_vla_ros.model.recipes import get_recipe
from ki_vla_ros.model.synthetic import synthetic_batch
from ki_vla_ros.train import vqa_eval


def test_vlm_pretrain_trains_vision_and_backbone_on_text_only():
    torch.manual_seed(0)
    model = KIVLA(ModelConfig.preset("tiny"))
    params = get_recipe("vlm_pretrain").configure(model)
    groups = model.param_groups()
    assert {id(p) for p in params} == {id(p) for g in ("vision", "backbone") for _, p in groups[g]}
    assert not any(p.requires_grad for _, p in groups["expert"])
    for p in model.parameters():  # let the loss decide what it reaches, not requires_grad
        p.requires_grad_(True)
    batch = synthetic_batch(model.config, batch_size=4, mix="mixed")  # VLM, action-only and both rows
    out = model.compute_loss(batch)
    assert out["flow_loss"].item() == 0.0 and out["text_loss"].item() > 0
    assert out["loss"].item() == pytest.approx(out["text_loss"].item())  # FAST targets not counted
    out["loss"].backward()
    assert all(p.grad is None or not p.grad.any() for _, p in groups["expert"])
    for g in ("vision", "backbone"):
        missed = [n for n, p in groups[g] if p.grad is None or not p.grad.any()]
        assert not missed, (g, missed)  # every vision and backbone tensor, down to the patch embedding


def rec(kind, answer):
    return VLMRecord([], "q?", answer, kind)


def test_vqa_accuracy_on_hand_made_predictions():
    records = [rec("count", "two"), rec("count", "three"), rec("count", "two"), rec("colour", "red"),
               rec("colour", "Blue"), rec("exists", "yes")]
    preds = ["two", " Three ", "one", "red", "blue", "no"]
    train = [rec("count", "three")] * 3 + [rec("count", "two"), rec("colour", "blue"), rec("exists", "no")]
    res = vqa_eval.vqa_accuracy(records, preds, train)
    assert res["per_kind"]["count"] == {"accuracy": pytest.approx(2 / 3), "n": 3, "majority_answer": "three",
                                        "majority_baseline": pytest.approx(1 / 3)}
    assert res["per_kind"]["colour"]["accuracy"] == 1.0 and res["per_kind"]["colour"]["majority_baseline"] == 0.5
    assert res["per_kind"]["exists"] == {"accuracy": 0.0, "n": 1, "majority_answer": "no", "majority_baseline": 0.0}
    assert res["overall"]["accuracy"] == pytest.approx(4 / 6)
    assert res["overall"]["majority_baseline"] == pytest.approx(2 / 6)
    assert res["overall"]["mean_over_kinds"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    own = vqa_eval.vqa_accuracy(records, preds)  # baseline from the scored records themselves
    assert own["per_kind"]["count"]["majority_answer"] == "two"
    with pytest.raises(ValueError, match="predictions"):
        vqa_eval.vqa_accuracy(records, preds[:-1])


def test_greedy_answers_agree_with_teacher_forcing():
    """Each decoded token is the argmax of the teacher-forced pass over prefix + decoded answer,
    for rows with different prefix lengths decoded in one batch."""
    torch.manual_seed(1)
    model = KIVLA(ModelConfig.preset("tiny")).eval()
    c = model.config
    rng = np.random.default_rng(0)
    examples = []
    for n in (5, 9, 7):
        mask = np.arange(c.max_prefix_tokens) < n
        tokens = np.where(mask, rng.integers(3, c.text_vocab_limit, c.max_prefix_tokens), 0)
        examples.append({"images": rng.uniform(-1, 1, (2, 3, c.image_size, c.image_size)).astype(np.float32),
                         "image_mask": np.array([True, False]), "state": np.zeros(c.state_dim, np.float32),
                         "prefix_tokens": tokens, "prefix_mask": mask})
    eos = 2
    answers = vqa_eval.greedy_answers(model, examples, eos_id=eos, max_new_tokens=5)
    assert len(answers) == 3 and all(len(a) <= 5 for a in answers)
    for e, ans in zip(examples, answers):
        prefix = e["prefix_tokens"][e["prefix_mask"]]
        row = torch.as_tensor(np.r_[prefix, ans])[None]
        kind = torch.as_tensor(np.r_[np.full(len(prefix), PREFIX), np.full(len(ans), TEXT)])[None]
        logits, _ = model.outputs(torch.as_tensor(e["images"])[None], torch.as_tensor(e["image_mask"])[None], row,
                                  kind, torch.zeros(1, c.state_dim))
        steps = logits[0, len(prefix) - 1:, : c.text_vocab_limit].argmax(-1).tolist()
        assert steps[:len(ans)] == ans
        if len(ans) < 5:
            assert steps[len(ans)] == eos


def test_robot_training_starts_from_the_vlm_base(tmp_path):
    """A tiny vlm_pretrain run (robot data at weight 0), exported; VQA scoring of the folder and the
    checkpoint agree; a robot run with model.init = that folder uses its text tokenizer and weights."""
    from ki_vla_ros.data.synthetic import tiny_train_config, write_tiny_dataset
    from ki_vla_ros.export.cli import export_main
    from ki_vla_ros.train.config import TrainConfig
    from ki_vla_ros.train.trainer import train

    data = write_tiny_dataset(tmp_path / "data")
    base = tiny_train_config(data, tmp_path / "base", recipe="vlm_pretrain", steps=4, eval_every=0,
                             checkpoint_every=4)
    base["datasets"][0].update(weight=0.0, val_episodes=0)
    base["model"]["overrides"]["state_dim"] = 24  # wider than the data's 14 (-> 16) and the preset's 8
    summary = train(from_dict(TrainConfig, base), log=lambda *a: None)
    assert np.isnan(summary["final_eval"]["val_flow_loss"])  # no robot example was evaluated
    assert export_main(["--checkpoint", str(tmp_path / "base"), "--out", str(tmp_path / "vlm_base"),
                        "--no-onnx"]) == 0
    scores = [vqa_eval.main(["--model", str(p), "--data", str(data["vlm"]), "--out", str(tmp_path / f"{i}.json")])
              for i, p in enumerate((tmp_path / "vlm_base", tmp_path / "base"))]
    assert scores == [0, 0]
    a, b = (json.loads((tmp_path / f"{i}.json").read_text()) for i in (0, 1))
    assert a["overall"] == b["overall"] and a["overall"]["n"] == 12
    assert [e["predicted"] for e in a["examples"]] == [e["predicted"] for e in b["examples"]]
    assert vqa_eval.main(["--model", str(tmp_path / "nothing"), "--data", str(data["vlm"])]) == 2

    robot = tiny_train_config(data, tmp_path / "robot", steps=1, eval_every=0, checkpoint_every=1,
                              optim={"lr": 0.0, "warmup_steps": 1})  # lr 0: the weights stay the base's
    robot["model"]["init"] = str(tmp_path / "vlm_base")
    train(from_dict(TrainConfig, robot), log=lambda *a: None)
    assert (tmp_path / "robot/assets/text_tokenizer.json").read_text() == \
        (tmp_path / "vlm_base/text_tokenizer.json").read_text()
    start = load_file(str(tmp_path / "vlm_base/weights.safetensors"))
    after = load_file(str(tmp_path / "robot/checkpoints/step_000001/model.safetensors"))
    assert start.keys() == after.keys() and all(torch.equal(start[k], after[k]) for k in start)
    # fine-tuning keeps the base's state width (its prompt layout), not the preset's or the data's
    from ki_vla_ros.runtime.model_dir import load_manifest

    base_cfg = load_manifest(tmp_path / "vlm_base").model
    robot_cfg = load_config(ModelConfig, tmp_path / "robot/assets/model.yaml")
    assert robot_cfg.state_dim == base_cfg.state_dim == 24


def test_collate_drops_camera_slots_no_example_fills():
    """Single-image VLM examples in three camera slots: the batch keeps one slot, the loss is the same."""
    from ki_vla_ros.data.examples import ExampleBuilder
    from ki_vla_ros.tokenize.prompt import PromptBuilder, collate
    from ki_vla_ros.tokenize.text import TextTokenizer

    torch.manual_seed(0)
    model = KIVLA(ModelConfig.preset("tiny"))
    c = model.config
    tok = TextTokenizer.train(["Where is the red cube? on the left", "How many cubes? two"], vocab_size=300)
    builder = ExampleBuilder(c, PromptBuilder(tok, c), ["cam_high", "cam_left_wrist", "cam_right_wrist"], {})
    rng = np.random.default_rng(0)
    exs = [builder.vlm([rng.integers(0, 255, (c.image_size, c.image_size, 3), dtype=np.uint8)], p, a)
           for p, a in (("Where is the red cube?", "on the left"), ("How many cubes?", "two"))]
    trimmed = collate(exs)
    full = collate(exs, pad_to=trimmed["tokens"].shape[1])  # fixed shapes: every slot kept
    assert full["images"].shape[1] == 3 and trimmed["images"].shape[1] == 1
    assert torch.equal(trimmed["images"][:, 0], full["images"][:, 0])
    torch.testing.assert_close(model.compute_loss(trimmed)["text_loss"], model.compute_loss(full)["text_loss"])
    mixed = collate([exs[0], {**exs[1], "image_mask": np.array([False, True, False])}])
    assert mixed["image_mask"].tolist() == [[True, False], [False, True]]  # slot 3 used by no example
