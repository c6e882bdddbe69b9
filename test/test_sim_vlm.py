"""VQA data about rendered scenes: answers agree with the sim's ground truth and with the image,
distractors only in VQA scenes, disjoint held-out split."""

import colorsys
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import imageio.v3 as iio
import numpy as np
import pytest

from ki_vla_ros.sim import vlm_data as V
from ki_vla_ros.sim.aloha import AlohaSim
from ki_vla_ros.sim.tasks import TASK_NAMES


def obj(colour, shape, x, y, z=0.02, visible=True):
    return V.SceneObject(colour, shape, np.array([x, y, z]), visible)


def hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*(np.asarray(rgb[:3], float) / max(1e-6, float(np.max(rgb[:3])))))[0]


def nearest_hue(pixel) -> str:
    """The palette colour whose hue is closest to the pixel's (lighting changes brightness, not hue)."""
    palette = V.DISTRACTOR_COLORS | V.CUBE_COLORS
    dist = {c: min(abs(hue(pixel) - hue(rgba)), 1 - abs(hue(pixel) - hue(rgba))) for c, rgba in palette.items()}
    return min(dist, key=dist.get)


def qa(scene, seed=0, per_kind=10):
    out = {}
    for kind, prompt, answer in V.questions(scene, np.random.default_rng(seed), per_kind=per_kind):
        out.setdefault(kind, {})[prompt] = answer
    return out


@pytest.fixture
def scene():
    # red cube left-front, blue cube held by the right arm, green ball back right, yellow cube centre
    objects = [obj("red", "cube", -0.10, 0.45), obj("blue", "cube", 0.09, 0.47, 0.16),
               obj("green", "ball", 0.11, 0.60), obj("yellow", "cube", 0.02, 0.52)]
    tcp = {"left": np.array([-0.15, 0.48, 0.15]), "right": np.array([0.09, 0.47, 0.16])}
    return V.Scene(objects, tcp, {"left": None, "right": "blue cube"})


def test_every_kind_answers_from_the_ground_truth(scene):
    q = qa(scene)
    assert set(q) == {"count", "colour", "exists", "left_right", "nearest", "position", "grid", "closer_arm", "held"}
    assert q["count"] == {"How many objects are on the table?": "three", "How many cubes are on the table?": "two",
                          "How many balls are on the table?": "one"}
    assert q["colour"] == {"What colour is the leftmost object on the table?": "red",
                           "What colour is the rightmost object on the table?": "green"}
    for prompt, answer in q["exists"].items():
        colour = prompt.split()[3]
        assert answer == ("yes" if colour in ("red", "blue", "green", "yellow") else "no"), prompt
    assert sorted(q["exists"].values()) == ["no", "yes"]
    for prompt, answer in q["left_right"].items():
        a, b = prompt.removeprefix("Is the ").removesuffix("?").split(" to the left or to the right of the ")
        xa, xb = (scene.get(n).pos[0] for n in (a, b))
        assert answer == ("left" if xa < xb else "right")
    assert q["nearest"]["Which object is nearest to the red cube?"] == "yellow cube"
    assert q["nearest"]["Which object is nearest to the green ball?"] == "yellow cube"
    assert q["position"] == {"Where is the red cube?": "front left", "Where is the blue cube?": "in the air",
                             "Where is the green ball?": "back right", "Where is the yellow cube?": "centre"}
    assert q["grid"] == {"Which cell of the grid is the red cube in?": "row 1 column 1",
                         "Which cell of the grid is the green ball in?": "row 3 column 4",
                         "Which cell of the grid is the yellow cube in?": "row 2 column 3"}
    for prompt, answer in q["closer_arm"].items():
        name = prompt.removeprefix("Which arm is closer to the ").removesuffix("?")
        assert answer == ("left" if name == "red cube" else "right"), prompt
    assert q["held"] == {"What is the left arm holding?": "nothing", "What is the right arm holding?": "blue cube"}


def test_ambiguous_and_unseen_are_not_asked(scene):
    scene.objects[3].pos[0] = -0.09  # yellow 1 cm right of red: no left/right between them, no leftmost
    q = qa(scene)
    assert "What colour is the leftmost object on the table?" not in q["colour"]
    assert not any("red cube" in p and "yellow cube" in p for p in q["left_right"])
    scene.objects[2].visible = False  # the green ball under an arm: no counts, no questions about it
    q = qa(scene)
    assert "count" not in q and "exists" not in q
    assert not any("green ball" in p for kind in q.values() for p in kind)


def test_rendered_scenes_match_their_records(tmp_path):
    seeds = [3, 4, 5, 9]
    jsonl = V.generate_vlm_records(tmp_path, seeds, image_size=112)
    recs = V.load_records(jsonl)
    by_img = {}
    for r in recs:
        by_img.setdefault(r["image"], {})[r["prompt"]] = r["answer"]
    assert len(by_img) == len(seeds)
    with V.SceneMaker(112) as maker:
        for seed in seeds:
            scene, images = maker.make(seed)
            img = iio.imread(tmp_path / f"images/scene_{seed:06d}_cam_high.png")
            assert np.array_equal(img, images["cam_high"])  # scenes are a function of the seed
            answers = by_img[f"images/scene_{seed:06d}_cam_high.png"]
            assert {p: a for _, p, a in V.questions(scene, np.random.default_rng([seed, 13]))} == answers
            # every visible object on the table shows its own colour where the camera projects it
            for o in scene.objects:
                if o.visible and o.pos[2] < V.HELD_Z:
                    u, v = maker.sim.project("cam_high", o.pos + [0, 0, 0.02])
                    assert nearest_hue(img[int(v), int(u)]) == o.colour, (seed, o.name, img[int(v), int(u)])
            table = [o for o in scene.objects if o.pos[2] < V.HELD_Z]
            if "How many objects are on the table?" in answers:
                assert answers["How many objects are on the table?"] == V.NUMBERS[len(table)]


def test_distractors_only_in_vqa_scenes(tmp_path):
    robot = AlohaSim(TASK_NAMES[0], seed=1, cameras=())
    assert not [robot.model.geom(i).name for i in range(robot.model.ngeom)
                if robot.model.geom(i).name.startswith("vqa_")]
    robot.close()
    colours = set()
    with V.SceneMaker(112) as maker:
        for seed in range(12):
            scene, _ = maker.make(seed)
            colours |= {o.colour for o in scene.objects}
    with V.SceneMaker(112, distractors=False) as maker:  # the robot-task objects only
        assert all({o.colour for o in maker.make(s)[0].objects} == {"red", "blue"} for s in range(3))
    assert colours - {"red", "blue"}, "no distractor in 12 VQA scenes"
    assert colours <= set(V.ALL_COLORS)


def test_heldout_split_is_disjoint(tmp_path):
    paths = V.generate_vqa(tmp_path, train_scenes=3, heldout_scenes=2, seed=7, log=None)
    train, held = (V.load_records(paths[k]) for k in ("train", "heldout"))
    assert {r["seed"] for r in train} == {7, 8, 9}
    assert {r["seed"] for r in held} == {7 + V.HELDOUT_OFFSET, 8 + V.HELDOUT_OFFSET}
    assert paths["train"].parent != paths["heldout"].parent  # separate folders: a folder path loads one split
    with pytest.raises(ValueError, match="train_scenes"):
        V.generate_vqa(tmp_path, V.HELDOUT_OFFSET + 1, 1)
