"""Visual question answering (VQA) about rendered ALOHA scenes: vision-language data from sim state.

Used twice: as the pre-training data of the vision-language base (recipe ``vlm_pretrain``,
config/train/vlm_base.yaml) and as the VLM co-training data mixed into robot training
(``generate.py``). No robot actions are recorded: a scene is rendered, its ground truth read from
the sim, and questions with exactly one right answer written out.

**Scenes.** Every scene starts from the robot-task scene of the seed (the red and blue cubes of
the task sampler, arms at home). In a share of scenes (:data:`ARM_SHARE`) the scripted expert has
run a pick first, stopped part-way (an arm reaching, grasping, or holding a lifted cube). VQA
scenes then add 0..:data:`MAX_DISTRACTORS` distractor objects (cubes and balls in
:data:`DISTRACTOR_COLORS`, colours the robot tasks never use), purely visual: mocap bodies without
collisions, placed after any arm motion, clear of the other objects and the grippers. The robot
task scenes (``AlohaSim`` without a ``scene_edit``) never contain them. Every colour occurs at
most once per scene, so "the green ball" names one object.

**Words.** "Left" / "right" are the robot's sides (x < 0 is left), which is image left / right in
``cam_high``; "front" is -y (image bottom, the side of gym-aloha's ``angle`` camera), "back" +y.
Objects are named "<colour> <shape>" ("red cube", "green ball"). An object counts as on the table
when its centre is below :data:`HELD_Z`, as held when a gripper finger touches it off the table.

**Questions** (``kind``: prompt -> answer):

* ``count`` — "How many objects / cubes / balls are on the table?" -> "three"
* ``colour`` — "What colour is the leftmost / rightmost object on the table?" -> "green"
* ``exists`` — "Is there a purple object?" -> "yes" / "no" (one of each per scene)
* ``left_right`` — "Is the red cube to the left or to the right of the green ball?" -> "left"
* ``nearest`` — "Which object is nearest to the red cube?" -> "green ball"
* ``position`` — "Where is the red cube?" -> "back left" / "centre" / "front right" / "in the air"
* ``grid`` — "Which cell of the grid is the red cube in?" -> "row 2 column 3" (:data:`GRID`)
* ``closer_arm`` — "Which arm is closer to the red cube?" -> "left" / "right" (gripper distance)
* ``held`` — "What is the left arm holding?" -> "red cube" / "nothing" (when a cube is held)

Questions whose answer would be ambiguous (two objects within :data:`MARGIN` of each other on the
asked axis or distance) or that depend on an object the image does not show (less than half of
it visible, by segmentation rendering) are not asked.

Records are JSONL lines ``{"image", "prompt", "answer", "camera", "seed", "kind"}`` (the format of
:mod:`ki_vla_ros.data.vlm`). :func:`generate_vqa` writes a training and a held-out split whose
scene seeds are disjoint (``<out>/train/vlm.jsonl``, ``<out>/heldout/vlm.jsonl``); the held-out
split is what ``python -m ki_vla_ros.train.vqa_eval`` scores.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import mujoco
import numpy as np

from ki_vla_ros.sim.aloha import ARM_SIDES, CAM_HIGH_POS, CAM_HIGH_VIEW, CAMERA_MAP, CUBE_COLORS, CUBE_HALF, AlohaSim
from ki_vla_ros.sim.tasks import COLORS, LAYOUT_X, LAYOUT_Y, arm_touches, get_task

HELD_Z = CUBE_HALF + 0.03  # object centre above this -> off the table
MARGIN = 0.03  # m: comparisons closer than this are not asked
ARM_SHARE = 0.4  # share of scenes in which the expert ran part of a pick first
ARM_STEPS = (50, 195)  # ... for this many control steps (uniform): reaching, grasping or lifted (195: done)
MAX_DISTRACTORS = 3
#: distractor colours; under the scene's lights they render with hues 0 (red), 27 (orange), 60, 120,
#: 186, 228 (blue), 280, 328 degrees: brighter orange / pink / purple wash out towards their neighbours
DISTRACTOR_COLORS = {"green": (0.1, 0.6, 0.1, 1.0), "yellow": (0.9, 0.85, 0.0, 1.0),
                     "purple": (0.35, 0.05, 0.5, 1.0), "orange": (0.7, 0.25, 0.0, 1.0),
                     "cyan": (0.0, 0.5, 0.55, 1.0), "pink": (0.7, 0.2, 0.4, 1.0)}
SHAPES = ("cube", "ball")
ALL_COLORS = (*CUBE_COLORS, *DISTRACTOR_COLORS)
#: distractor centres are sampled here (x, y): the cube layout region plus 2 cm, all inside cam_high
PROP_X = (LAYOUT_X[0] - 0.02, LAYOUT_X[1] + 0.02)
PROP_Y = (LAYOUT_Y[0] - 0.02, LAYOUT_Y[1] + 0.02)
MIN_GAP = 0.07  # m between object centres (and from a gripper) when placing distractors
#: grid question: the table area PROP_X x PROP_Y in rows (front to back) x columns (left to right)
GRID = (3, 4)
#: coarse position words: x below -X_CENTRE "left", above "right"; y likewise "front" / "back"
X_CENTRE, Y_FRONT, Y_BACK = 0.05, 0.49, 0.55
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven")
HELDOUT_OFFSET = 500_000  # held-out scene seeds: seed + HELDOUT_OFFSET + i (training: seed + i)
#: unused distractors wait under the table (far away they would grow the model's extent, and with
#: it the near clipping plane, past the camera: black images)
PARK = (0.0, 0.6, -0.2)


def prop_name(colour: str, shape: str) -> str:
    return f"vqa_{colour}_{shape}"


def add_props(spec: mujoco.MjSpec) -> None:
    """``scene_edit`` of VQA scenes: one parked mocap body per distractor colour x shape (no contacts)."""
    for colour, rgba in DISTRACTOR_COLORS.items():
        for shape in SHAPES:
            body = spec.worldbody.add_body(name=prop_name(colour, shape), pos=list(PARK), mocap=True)
            body.add_geom(name=prop_name(colour, shape),
                          type=mujoco.mjtGeom.mjGEOM_BOX if shape == "cube" else mujoco.mjtGeom.mjGEOM_SPHERE,
                          size=[CUBE_HALF] * 3, rgba=list(rgba), contype=0, conaffinity=0)


@dataclass
class SceneObject:
    colour: str
    shape: str
    pos: np.ndarray  # centre (x, y, z), m
    visible: bool = True

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    """Ground truth of one rendered scene."""

    objects: list[SceneObject]
    tcp: dict[str, np.ndarray]  # arm -> gripper centre point
    held: dict[str, str | None]  # arm -> name of the object it holds (or None)

    def on_table(self) -> list[SceneObject]:
        return [o for o in self.objects if o.pos[2] < HELD_Z]

    def get(self, name: str) -> SceneObject:
        return next(o for o in self.objects if o.name == name)


# ---------------------------------------------------------------------------------------- questions
def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def coarse_position(o: SceneObject) -> str:
    if o.pos[2] >= HELD_Z:
        return "in the air"
    x, y = o.pos[0], o.pos[1]
    col = "left" if x < -X_CENTRE else "right" if x > X_CENTRE else ""
    row = "front" if y < Y_FRONT else "back" if y > Y_BACK else ""
    return " ".join(w for w in (row, col) if w) or "centre"


def grid_cell(o: SceneObject) -> tuple[int, int]:
    """(row, column), 1-based: row 1 at the front, column 1 on the left."""
    rows, cols = GRID
    fy = (o.pos[1] - PROP_Y[0]) / (PROP_Y[1] - PROP_Y[0])
    fx = (o.pos[0] - PROP_X[0]) / (PROP_X[1] - PROP_X[0])
    return int(np.clip(fy * rows, 0, rows - 1)) + 1, int(np.clip(fx * cols, 0, cols - 1)) + 1


def _near_boundary(o: SceneObject) -> bool:
    """Within 1 cm of a grid line or a coarse-position threshold (those questions are skipped)."""
    rows, cols = GRID
    ys = np.linspace(*PROP_Y, rows + 1)[1:-1]
    xs = np.linspace(*PROP_X, cols + 1)[1:-1]
    x, y = o.pos[0], o.pos[1]
    return bool(np.min(np.abs(np.r_[xs, -X_CENTRE, X_CENTRE] - x)) < 0.01
                or np.min(np.abs(np.r_[ys, Y_FRONT, Y_BACK] - y)) < 0.01)


def questions(scene: Scene, rng: np.random.Generator, per_kind: int = 2) -> list[tuple[str, str, str]]:
    """(kind, prompt, answer) triples, each true for ``scene`` and unambiguous; at most ``per_kind``
    per object-based kind (objects drawn with ``rng``)."""
    out: list[tuple[str, str, str]] = []
    table = scene.on_table()
    seen = [o for o in scene.objects if o.visible]

    def pick(items, n=per_kind):
        items = list(items)
        return [items[i] for i in sorted(rng.permutation(len(items))[:n])]

    if all(o.visible for o in table):  # counts need every object on the table in view
        out.append(("count", "How many objects are on the table?", NUMBERS[len(table)]))
        for shape in SHAPES:
            n = sum(o.shape == shape for o in table)
            out.append(("count", f"How many {shape}s are on the table?", NUMBERS[n]))
        by_x = sorted(table, key=lambda o: o.pos[0])
        if len(by_x) >= 2 and by_x[1].pos[0] - by_x[0].pos[0] >= MARGIN:
            out.append(("colour", "What colour is the leftmost object on the table?", by_x[0].colour))
        if len(by_x) >= 2 and by_x[-1].pos[0] - by_x[-2].pos[0] >= MARGIN:
            out.append(("colour", "What colour is the rightmost object on the table?", by_x[-1].colour))
    present = {o.colour for o in scene.objects}
    if all(o.visible for o in scene.objects):
        absent = [c for c in ALL_COLORS if c not in present]
        if absent:
            out.append(("exists", f"Is there {_a(pick(absent, 1)[0])} object?", "no"))
        out.append(("exists", f"Is there {_a(pick(sorted(present), 1)[0])} object?", "yes"))
    pairs = [(a, b) for a in seen for b in seen if a is not b and abs(a.pos[0] - b.pos[0]) >= MARGIN]
    for a, b in pick(pairs):
        out.append(("left_right", f"Is the {a.name} to the left or to the right of the {b.name}?",
                    "left" if a.pos[0] < b.pos[0] else "right"))
    if len(seen) == len(scene.objects) and len(seen) >= 3:
        for a in pick(seen):
            d = sorted((float(np.linalg.norm(b.pos - a.pos)), b.name) for b in seen if b is not a)
            if d[1][0] - d[0][0] >= MARGIN:
                out.append(("nearest", f"Which object is nearest to the {a.name}?", d[0][1]))
    for o in pick(seen):
        if o.pos[2] >= HELD_Z or not _near_boundary(o):
            out.append(("position", f"Where is the {o.name}?", coarse_position(o)))
    for o in pick([o for o in seen if o.pos[2] < HELD_Z and not _near_boundary(o)]):
        r, c = grid_cell(o)
        out.append(("grid", f"Which cell of the grid is the {o.name} in?", f"row {r} column {c}"))
    for o in pick(seen):
        dl, dr = (float(np.linalg.norm(scene.tcp[a] - o.pos)) for a in ARM_SIDES)
        if abs(dl - dr) >= MARGIN:
            out.append(("closer_arm", f"Which arm is closer to the {o.name}?", "left" if dl < dr else "right"))
    if any(scene.held.values()):
        for arm in ARM_SIDES:
            held = scene.held[arm]
            if held is None or scene.get(held).visible:
                out.append(("held", f"What is the {arm} arm holding?", held or "nothing"))
    return out


# -------------------------------------------------------------------------------------------- scenes
class SceneMaker:
    """Renders VQA scenes with one simulator and one renderer (``with SceneMaker(...) as m``)."""

    def __init__(self, image_size: int = 112, cameras=("cam_high",), distractors: bool = True):
        self.sim = AlohaSim(None, seed=0, image_size=image_size, cameras=(), scene_edit=add_props)
        self.cameras, self.distractors, self.size = tuple(cameras), distractors, image_size
        self._seg = mujoco.Renderer(self.sim.model, image_size, image_size)
        self._seg.enable_segmentation_rendering()
        m = self.sim.model
        self._mocap = {(c, s): m.body(prop_name(c, s)).mocapid[0] for c in DISTRACTOR_COLORS for s in SHAPES}
        self._geom = {f"{c} cube": m.geom(f"{c}_cube").id for c in COLORS}
        self._geom |= {f"{c} {s}": m.geom(prop_name(c, s)).id for c in DISTRACTOR_COLORS for s in SHAPES}

    def close(self) -> None:
        self._seg.close()
        self.sim.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def make(self, seed: int) -> tuple[Scene, dict[str, np.ndarray]]:
        """Scene of ``seed`` (layout, lift, distractors all from the seed) and its images per camera."""
        from ki_vla_ros.sim.expert import expert_actions
        from ki_vla_ros.sim.tasks import TASK_NAMES

        sim = self.sim
        rng = np.random.default_rng([seed, 12])
        sim.reset(seed)  # task cubes from the task sampler of this seed, props parked
        if rng.random() < ARM_SHARE:
            steps = int(rng.integers(ARM_STEPS[0], ARM_STEPS[1] + 1))
            for _, act in zip(range(steps), expert_actions(sim, get_task(TASK_NAMES[int(rng.integers(4))]))):
                sim.step(act, render=False)  # one of the four picks, stopped part-way
        objects = [SceneObject(c, "cube", sim.cube_position(c)) for c in COLORS]
        tcp = {a: sim.tcp_position(a) for a in ARM_SIDES}
        n = int(rng.integers(MAX_DISTRACTORS + 1)) if self.distractors else 0
        colours = [str(c) for c in rng.permutation(list(DISTRACTOR_COLORS))[:n]]
        keep_clear = [o.pos[:2] for o in objects] + [p[:2] for p in tcp.values()]
        for colour in colours:
            for _ in range(100):
                xy = np.array([rng.uniform(*PROP_X), rng.uniform(*PROP_Y)])
                if all(np.linalg.norm(xy - q) >= MIN_GAP for q in keep_clear):
                    break
            else:
                continue  # no room left for this one
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            pos = np.array([xy[0], xy[1], CUBE_HALF])
            sim.data.mocap_pos[self._mocap[colour, shape]] = pos
            objects.append(SceneObject(colour, shape, pos))
            keep_clear.append(xy)
        mujoco.mj_forward(sim.model, sim.data)
        held = {a: next((f"{c} cube" for c in COLORS if sim.cube_position(c)[2] >= HELD_Z and arm_touches(sim, a, c)),
                        None) for a in ARM_SIDES}
        self._mark_visible(objects)
        images = {cam: sim.render(cam) for cam in self.cameras}
        return Scene(objects, tcp, held), images

    def _mark_visible(self, objects: list[SceneObject]) -> None:
        """Visible = at least half of the object's expected top-view area is on screen in cam_high."""
        self._seg.update_scene(self.sim.data, camera=CAMERA_MAP["cam_high"])
        seg = self._seg.render()
        geoms = seg[..., 0][seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM)]
        counts = np.bincount(geoms, minlength=self.sim.model.ngeom)
        for o in objects:
            height = CAM_HIGH_POS[2] - (o.pos[2] + CUBE_HALF)
            side_px = 2 * CUBE_HALF / (CAM_HIGH_VIEW * height / CAM_HIGH_POS[2]) * self.size
            area = side_px**2 * (1.0 if o.shape == "cube" else np.pi / 4)
            o.visible = bool(counts[self._geom[o.name]] >= 0.5 * area)


# ------------------------------------------------------------------------------------------- writing
def generate_vlm_records(out_dir, seeds, image_size: int = 112, cameras=("cam_high",),
                         jsonl_name: str = "vlm.jsonl", distractors: bool = True, log=None) -> Path:
    """Render one scene per seed and write ``images/*.png`` and ``<jsonl_name>`` (one record per
    question) into ``out_dir``. Returns the JSONL path."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / jsonl_name
    t0 = time.time()
    with SceneMaker(image_size, cameras, distractors) as maker, open(jsonl, "w") as f:
        for i, seed in enumerate(seeds):
            seed = int(seed)
            scene, images = maker.make(seed)
            qa = questions(scene, np.random.default_rng([seed, 13]))
            for cam, img in images.items():
                rel = f"images/scene_{seed:06d}_{cam}.png"
                iio.imwrite(out_dir / rel, img)
                for kind, prompt, answer in qa:
                    f.write(json.dumps({"image": rel, "prompt": prompt, "answer": answer, "camera": cam,
                                        "seed": seed, "kind": kind}) + "\n")
            if log and (i + 1) % 200 == 0:
                log(f"{out_dir}: {i + 1} scenes ({time.time() - t0:.0f} s)")
    return jsonl


def generate_vqa(out_dir, train_scenes: int, heldout_scenes: int, seed: int = 0, image_size: int = 112,
                 log=print) -> dict[str, Path]:
    """Training split (scene seeds ``seed + i``) and held-out split (``seed + HELDOUT_OFFSET + i``)
    under ``out_dir/train`` and ``out_dir/heldout``: {"train": jsonl, "heldout": jsonl}."""
    if train_scenes > HELDOUT_OFFSET:
        raise ValueError(f"train_scenes: at most {HELDOUT_OFFSET} (the held-out seeds start there)")
    out_dir = Path(out_dir)
    return {"train": generate_vlm_records(out_dir / "train", range(seed, seed + train_scenes), image_size, log=log),
            "heldout": generate_vlm_records(out_dir / "heldout", range(seed + HELDOUT_OFFSET,
                                                                      seed + HELDOUT_OFFSET + heldout_scenes),
                                            image_size, log=log)}


def load_records(jsonl) -> list[dict]:
    with open(jsonl) as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Generate VQA data about rendered ALOHA scenes (train + held-out)")
    p.add_argument("--out", required=True)
    p.add_argument("--train-scenes", type=int, default=4000)
    p.add_argument("--heldout-scenes", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=112)
    a = p.parse_args(argv)
    t0 = time.time()
    paths = generate_vqa(a.out, a.train_scenes, a.heldout_scenes, a.seed, a.image_size)
    counts = {k: sum(1 for _ in open(v)) for k, v in paths.items()}
    print(json.dumps({"jsonl": {k: str(v) for k, v in paths.items()}, "records": counts,
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
