"""The recipe study (`ki-vla study`): its config checks, the results store, the table and plots from
stored results, the closed-loop adapter at `ki-vla eval`'s boundary, and a tiny study that is killed
during training and during evaluation and resumes without redoing anything.

The tiny study's closed-loop evaluator is `EvalDouble` below, a test double at the study's
`evaluate` boundary (the real one, `ClosedLoopEval`, starts the simulator and the policy node per
call); everything else — base, training, resume, checkpoint export, VQA scoring — is the product's.
"""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from ki_vla_ros.configio import ConfigError, from_dict
from ki_vla_ros.study.config import StudyConfig
from ki_vla_ros.study.report import write_report
from ki_vla_ros.study.run import FAST_POLICY, RELAXED_FAST_POLICY, ClosedLoopEval, EvalFailed, Study, study_main
from ki_vla_ros.study.store import ResultStore

HELDOUT = "config/eval/heldout_phrasings.json"


def study_dict(tmp_path, **fields) -> dict:
    d = {"out": str(tmp_path / "study"), "base": {"model_dir": str(tmp_path / "base")},
         "train_config": str(tmp_path / "robot.yaml"), "model": {"preset": "tiny"}, "steps": 6, "eval_steps": [3, 6]}
    d.update(fields)
    return d


@pytest.mark.parametrize("fields, key", [
    ({"eval_steps": [3, 5]}, "eval_steps"),
    ({"eval_steps": [4, 2, 6]}, "eval_steps"),
    ({"recipes": ["ki", "pi1"]}, "recipes"),
    ({"recipes": ["ki", "vlm_pretrain"]}, "recipes"),
    ({"seeds": [0, 0]}, "seeds"),
    ({"train_overrides": {"recipe": "pi0"}}, "train_overrides"),
    ({"model": {"preset": "tiny", "overrides": {"widht": 8}}}, "model.overrides"),
    ({"closed_loop": {"tasks": ["pick_green_left"]}}, "closed_loop.tasks"),
    ({"success_threshold": 0.0}, "success_threshold"),
    ({"language": {"data": ["x"], "every": 0}}, "language.every"),
    ({"fixed_latency": {"episodes": -1}}, "fixed_latency.episodes"),
    ({"episodes": 1}, "episodes"),
])
def test_config_errors_name_the_key(tmp_path, fields, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        from_dict(StudyConfig, study_dict(tmp_path, **fields), "study.yaml")


def test_cli_refuses_a_bad_config_in_one_line(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_dict(tmp_path, eval_steps=[2, 4])))
    assert study_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ki-vla study: ") and "eval_steps" in err and "\n" not in err
    assert not (tmp_path / "study").exists()


def test_store_keeps_rows_on_disk_and_skips_a_cut_line(tmp_path):
    store = ResultStore(tmp_path / "results.jsonl")
    store.add("ki", 0, 3, "vqa", {"accuracy": 0.5, "nan": float("nan")})
    store.add("ki", 0, 3, "expert_canonical", {"error": "ki-vla eval exited with 1"})
    with open(store.path, "a") as f:
        f.write('{"recipe": "ki", "seed": 0, "step": 6, "meas')  # a kill mid-write
    again = ResultStore(store.path)
    assert again.get("ki", 0, 3, "vqa") == {"recipe": "ki", "seed": 0, "step": 3, "measure": "vqa",
                                            "accuracy": 0.5, "nan": None}
    assert again.done("ki", 0, 3, "expert_canonical") and not again.done("ki", 0, 3, "expert_canonical", True)
    assert not again.done("ki", 0, 6, "vqa") and len(again.rows()) == 2
    with pytest.raises(ValueError, match="unknown measure"):
        again.add("ki", 0, 3, "success", {})


def closed(success, followed=0.5, ms=50.0, episodes=4) -> dict:
    return {"success_rate": success, "instruction_following_rate": followed, "episodes": episodes,
            "inference_ms_p50": ms, "holds": 0, "per_task": {}}


def test_table_and_plots_from_stored_results(tmp_path):
    out = tmp_path / "study"
    s = ResultStore(out / "results.jsonl")
    s.add("base", None, 0, "vqa", {"accuracy": 0.62})
    for seed, (early, late) in enumerate([(0.25, 0.5), (0.0, 0.75)]):
        s.add("ki", seed, 20, "train", {"ms_per_step": 100.0 + 20 * seed})
        for step, success in ((10, early), (20, late)):
            s.add("ki", seed, step, "expert_canonical", closed(success, ms=40.0))
            s.add("ki", seed, step, "expert_heldout", closed(success / 2))
            s.add("ki", seed, step, "fast_canonical", closed(0.0, ms=300.0 + seed))
            if step == 20:
                s.add("ki", seed, step, "fast_relaxed", closed(0.25 * seed, ms=310.0) | {"chunks": 12 + seed})
            s.add("ki", seed, step, "vqa", {"accuracy": 0.6 - 0.1 * seed})
            s.add("ki", seed, step, "offline", {"action_mse": 0.2, "fast_token_acc": 0.5})
            s.add("ki", seed, step, "sim_canonical", {"success_rate": early if step == 10 else 0.4 + 0.2 * seed,
                                                      "instruction_following_rate": 0.9})
            s.add("ki", seed, step, "sim_heldout", {"success_rate": 0.3, "instruction_following_rate": 0.8})
            s.add("ki", seed, step, "language", {"own_first_chunk_arm_mae_rad": 0.05 + 0.01 * seed,
                                                 "colour_read": 0.75, "arm_read": 1.0 - 0.5 * seed})
    s.add("pi0", 0, 10, "expert_canonical", closed(0.5))  # partial: one seed, one step, held-out failed
    s.add("pi0", 0, 10, "expert_heldout", {"error": "ki-vla eval exited with 1"})
    table = write_report(out, 0.5, ["pi0", "ki", "joint"]).read_text()
    rows = {}
    for line in table.split("## Over training")[0].splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells
    ki = rows["`ki`"]
    assert ki[1:15] == ["2", "20", "62% [50%, 75%]", "31% [25%, 38%]", "50% [50%, 50%]", "50% [50%, 50%]",
                        "50% [40%, 60%]", "30% [30%, 30%]", "90% [90%, 90%]",
                        "0.055 [0.050, 0.060]", "75% [75%, 75%]", "75% [100%, 50%]", "0.55 [0.60, 0.50]",
                        "—, 20"]  # steps to 50 %: in process where measured (seed 0: 25 % then 40 %)
    assert ki[15:24] == ["110 [100, 120]", "0% [0%, 0%]", "300 [300, 301]", "12% [0%, 25%]", "50% [50%, 50%]",
                         "12 [12, 13]", "310 [310, 310]", "40 [40, 40]", "0.200 [0.200, 0.200]"]
    pi0 = rows["`pi0`"]
    assert pi0[1:15] == ["1", "10", "50%", "failed", "50%", "failed", "—", "—", "—", "—", "—", "—", "—", "10"]
    assert "VQA acc (base 0.62)" in table and "`joint`" not in table
    assert table.index("| `pi0`") < table.index("| `ki`")  # the configured order
    curves = [line for line in table.split("## Over training")[1].splitlines() if line.startswith("| `ki` | 10")]
    assert curves == ["| `ki` | 10 | 2 | 12% [25%, 0%] | 6% [12%, 0%] | 50% [50%, 50%] | 12% [25%, 0%] "
                      "| 30% [30%, 30%] | 75% [75%, 75%] "
                      "| 75% [100%, 50%] | 0% [0%, 0%] | 0.55 [0.60, 0.50] | 0.200 [0.200, 0.200] "
                      "| 0.50 [0.50, 0.50] |"]
    for name in ("curves.png", "timing.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (out / "table.md").unlink()
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_dict(tmp_path, recipes=["pi0", "ki", "joint"])))
    assert study_main(["--config", str(path), "--out", str(out), "--report-only"]) == 0  # trains nothing
    assert (out / "table.md").read_text() == table and not (out / "runs").exists()


def test_closed_loop_adapter_passes_ki_vla_eval_its_arguments(tmp_path):
    """ki-vla eval parses what the adapter builds; a missing model comes back as EvalFailed with the reason."""
    cfg = from_dict(StudyConfig, study_dict(tmp_path, closed_loop={"episodes": 2, "tasks": ["pick_red_left"],
                                                                    "duration": 3.0}))
    ev = ClosedLoopEval(cfg.closed_loop)
    argv = ev.argv(tmp_path / "m", tmp_path / "e", HELDOUT, FAST_POLICY)
    assert argv[argv.index("--policy-class") + 1] == FAST_POLICY and argv[argv.index("--instructions") + 1] == HELDOUT
    assert argv[argv.index("--episodes") + 1] == "2" and argv[argv.index("--duration") + 1] == "3.0"
    with pytest.raises(EvalFailed, match=r"exited with 2 .*not a model folder"):
        ev(tmp_path / "no_model", tmp_path / "e", HELDOUT, FAST_POLICY)


class EvalDouble:
    """Test double of the study's closed-loop evaluator: success 0 at step 3 and 1 at step 6 (from the
    model folder's name), every call recorded; raises KeyboardInterrupt at call number `kill_at`."""

    def __init__(self, kill_at: int = 0):
        self.calls, self.kill_at = [], kill_at

    def __call__(self, model_dir, out_dir, instructions="", policy_class=""):
        step = int(Path(model_dir).name.removeprefix("step_"))
        assert (Path(model_dir) / "model.yaml").is_file()
        self.calls.append((Path(model_dir).parts[-4], step, instructions, policy_class))
        if len(self.calls) == self.kill_at:
            raise KeyboardInterrupt
        ok = float(step == 6)
        return {"overall": {"success_rate": ok, "instruction_following_rate": ok, "episodes": 2},
                "per_task": {"pick_red_left": {"success_rate": ok}},
                "episodes": [{"inference_ms_p50": 10.0 if not policy_class else 30.0, "policy_holds": 0, "chunks": 9},
                             {"inference_ms_p50": 0.0, "policy_holds": 1, "chunks": 0}]}  # nothing published


@pytest.mark.slow
def test_tiny_study_resumes_after_kills(tmp_path):
    from ki_vla_ros.data.synthetic import tiny_train_config, write_tiny_dataset
    from ki_vla_ros.train.checkpoint import list_checkpoints
    from ki_vla_ros.train.vqa_eval import evaluate_vqa

    data = write_tiny_dataset(tmp_path / "data")
    base = tiny_train_config(data, "set-by-the-study", recipe="vlm_pretrain", steps=4, eval_every=0,
                             checkpoint_every=4)
    base["datasets"][0].update(weight=0.0, val_episodes=0)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "robot.yaml").write_text(yaml.safe_dump(tiny_train_config(data, "set-by-the-study")))
    cfg = from_dict(StudyConfig, study_dict(
        tmp_path, base={"model_dir": str(tmp_path / "base"), "train_config": str(tmp_path / "base.yaml")},
        model={"preset": "tiny", "overrides": {"max_target_tokens": 96}}, recipes=["ki", "pi0_fast"], seeds=[0],
        closed_loop={"episodes": 1, "tasks": ["pick_red_left"], "heldout_instructions": HELDOUT},
        vqa={"data": str(data["vlm"]), "limit": 4}, language={"data": ["held-out episodes"]},
        fixed_latency={"episodes": 2}, threads=1))
    probed = []

    simulated = []

    def simulate(model_dir, heldout):  # test double of the in-process closed loop (test_sim_fixed_latency.py)
        simulated.append((Path(model_dir).parts[-4], int(Path(model_dir).name.removeprefix("step_")), heldout))
        return {"success_rate": 0.25, "instruction_following_rate": 0.5, "episodes": 8}

    def probe(model_dir):  # test double of the instruction-swap probe (test_sim_instruction_swap.py)
        probed.append((Path(model_dir).parts[-4], int(Path(model_dir).name.removeprefix("step_"))))
        return {"episodes": 8, "own_first_chunk_arm_mae_rad": 0.1, "colour_read": 1.0, "arm_read": 0.5}
    lines: list[str] = []

    def kill_in_training(msg):  # the first evaluation at step 6 is ki's: checkpoint 3 exists, 6 not yet
        lines.append(msg)
        if msg.startswith("[eval] step 6"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Study(cfg, EvalDouble(), log=kill_in_training, probe=probe, simulate=simulate).run()
    ki = tmp_path / "study/runs/ki/seed0"
    assert [p.name for p in list_checkpoints(ki)] == ["step_000003"]
    assert (tmp_path / "base/model.yaml").is_file()

    lines.clear()
    killed = EvalDouble(kill_at=2)
    with pytest.raises(KeyboardInterrupt):
        Study(cfg, killed, log=lines.append, probe=probe, simulate=simulate).run()
    assert any("resumed from" in m and "step 3" in m for m in lines)
    store = ResultStore(tmp_path / "study/results.jsonl")
    assert {k for k in map(ResultStore.key, store.rows())} == {
        ("base", None, 0, "vqa"), ("ki", 0, 6, "train"), ("ki", 0, 3, "offline"), ("ki", 0, 3, "expert_canonical")}
    final_ckpt = (ki / "checkpoints/step_000006/model.safetensors").stat().st_mtime_ns

    rest = EvalDouble()
    Study(cfg, rest, log=lines.append, probe=probe, simulate=simulate).run()
    assert rest.calls == [("ki", 3, HELDOUT, ""), ("ki", 3, "", FAST_POLICY), ("ki", 6, "", ""),
                          ("ki", 6, HELDOUT, ""), ("ki", 6, "", FAST_POLICY), ("ki", 6, "", RELAXED_FAST_POLICY),
                          ("pi0_fast", 3, "", FAST_POLICY), ("pi0_fast", 6, "", FAST_POLICY),
                          ("pi0_fast", 6, "", RELAXED_FAST_POLICY)]  # relaxed FAST decoding: the last step only
    assert (ki / "checkpoints/step_000006/model.safetensors").stat().st_mtime_ns == final_ckpt  # not retrained
    assert sorted(p.name for p in (ki / "models").iterdir()) == ["step_000006"]  # step 3's folder removed
    lines_on_disk = [json.loads(x) for x in (tmp_path / "study/results.jsonl").read_text().splitlines()]
    assert len(lines_on_disk) == len({ResultStore.key(r) for r in lines_on_disk}) == 4 + 3 + 5 + 1 + 2 * 3 + 2 + 4 + 2
    assert probed == [("ki", 3), ("ki", 6)]  # the flow expert's recipes only, once per evaluated step
    assert simulated == [("ki", 3, False), ("ki", 3, True), ("ki", 6, False), ("ki", 6, True)]
    vqa = ResultStore(tmp_path / "study/results.jsonl").get("ki", 0, 6, "vqa")
    direct = evaluate_vqa(ki / "models/step_000006", data["vlm"], limit=4, threads=1)["overall"]
    assert (vqa["accuracy"], vqa["n"]) == (direct["accuracy"], 4)
    table = (tmp_path / "study/table.md").read_text()
    assert "| `ki` | 1 | 6 | 100% | 100% | 100% | 100% | 25% | 25% | 50% | 0.100 | 100% | 50% |" in table
    assert "| `pi0_fast` | 1 | 6 | — |" in table
    fast = ResultStore(tmp_path / "study/results.jsonl").get("pi0_fast", 0, 6, "fast_canonical")
    assert (fast["inference_ms_p50"], fast["chunks"], fast["holds"]) == (30.0, 9, 1)  # latency of published chunks

    assert Study(cfg, EvalDouble(kill_at=1), log=lines.append, probe=probe,
                 simulate=simulate).run() == tmp_path / "study/table.md"

    # the results record alone (a fresh clone with the committed docs/recipe_study/results.jsonl): every
    # run is complete, so nothing is trained or measured and no run folder is made
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copyfile(tmp_path / "study/results.jsonl", moved / "results.jsonl")
    lines.clear()
    assert Study(dataclasses.replace(cfg, out=str(moved)), EvalDouble(kill_at=1), log=lines.append,
                 probe=probe, simulate=simulate).run() == moved / "table.md"
    assert lines == [] and not (moved / "runs").exists()
    assert (moved / "table.md").read_text().replace(str(moved), str(tmp_path / "study")) == table
