"""Vision-language records agree with the sim state and with the rendered image."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import imageio.v3 as iio
import numpy as np

from ki_vla_ros.sim.aloha import AlohaSim
from ki_vla_ros.sim.vlm_data import generate_vlm_records, load_records, qa_pairs, scene_facts


def _pixel_x(img, color):
    im = img.astype(int)
    if color == "red":
        mask = im[..., 0] - im[..., 1:].max(-1) > 80
    else:
        mask = im[..., 2] - im[..., :2].max(-1) > 80
    ys, xs = np.nonzero(mask)
    assert len(xs) > 2, f"{color} cube not visible"
    return xs.mean()


def test_vlm_records_match_sim_state_and_image(tmp_path):
    seeds = [11, 12, 13, 14]
    jsonl = generate_vlm_records(tmp_path, seeds, image_size=224)
    recs = load_records(jsonl)
    assert recs and all((tmp_path / r["image"]).exists() for r in recs)
    by_img = {}
    for r in recs:
        by_img.setdefault(r["image"], {})[r["kind"] + ":" + r["prompt"]] = r["answer"]
    assert len(by_img) == len(seeds)
    for i, seed in enumerate(seeds):
        img_rel = next(k for k in by_img if f"scene_{seed:05d}_" in k)
        qa = by_img[img_rel]
        if i % 2 == 0:  # untouched scene: both cubes on the table, left/right visible in the image
            img = iio.imread(tmp_path / img_rel)
            left = "red" if _pixel_x(img, "red") < _pixel_x(img, "blue") else "blue"
            assert qa["colour_left:Which colour is the cube on the left?"] == left
            assert qa["count:How many cubes are on the table?"] == "two"
            s = AlohaSim(None, seed=seed, cameras=())
            x = {c: s.cube_position(c)[0] for c in ("red", "blue")}
            s.close()
            assert left == min(x, key=x.get)
            assert qa["caption:Describe the scene."].startswith(f"a {left} cube and a ")
        else:  # after the expert lifted one cube
            assert qa["count:How many cubes are on the table?"] == "one"
            assert "holding" in qa["caption:Describe the scene."]


def test_qa_pairs_follow_facts():
    facts = {"cubes": {"red": [0.1, 0.5, 0.02], "blue": [-0.1, 0.5, 0.15]}, "leftmost": "blue",
             "rightmost": "red", "on_table": ["red"], "lifted": ["blue"],
             "coarse_x": {"red": "right", "blue": "left"}}
    qa = {p: a for _, p, a in qa_pairs(facts)}
    assert qa["How many cubes are on the table?"] == "one"
    assert qa["Where is the red cube?"] == "on the right side of the table"
    assert qa["Where is the blue cube?"] == "in the air, held by a gripper"
    assert qa["Which arm is closer to the blue cube?"] == "left"
    s = AlohaSim(None, seed=0, cameras=())
    f = scene_facts(s)
    s.close()
    assert f["on_table"] == ["red", "blue"] and f["lifted"] == []
