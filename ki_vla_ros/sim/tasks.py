"""Language-conditioned tasks in one scene: a red and a blue cube on the ALOHA table.

Every task samples the initial layout with the same sampler, so one initial image admits
several correct behaviours; only the instruction says which cube and which arm(s).

World frame: x points from the left arm (x = -0.469) to the right arm (x = +0.469), y away
from the robot's front (the arms sit at y = 0.5), z up; the table top is at z = 0.
"Left" / "right" always mean the robot's left / right arm side (negative / positive x).

Phrasings: every task has its canonical instruction (``Task.instruction``) and a family of
paraphrases (:func:`phrasings`: the templates below x synonyms pick up / grab / lift / take,
arm / hand / gripper, cube / block, clause order, politeness). The family is split once, by a
hash of the text, into training phrasings and a held-out set that training never sees
(:func:`heldout_phrasings`, about 1 in ``HELDOUT_EVERY``; the canonical instruction is always a
training phrasing). `config/eval/heldout_phrasings.json` is that held-out set for
``ki-vla eval --instructions`` (rewrite it with ``python -m ki_vla_ros.sim.tasks heldout``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from ki_vla_ros.sim.aloha import ARM_SIDES, CUBE_COLORS, CUBE_HALF

COLORS = tuple(CUBE_COLORS)

#: cube centres are sampled uniformly in this box (x, y), metres
LAYOUT_X = (-0.12, 0.12)
LAYOUT_Y = (0.44, 0.60)
#: the two cubes differ by at least this much in x, so "left cube" / "right cube" is unambiguous
MIN_DX = 0.08

LIFT_HEIGHT = 0.08  # cube centre above this (m) = lifted
MOVED = 0.02  # displacement (m) that counts as "moved"
ENGAGE = 0.04  # TCP within this distance of a cube centre = the arm went for it
OFF_TABLE = CUBE_HALF + 0.01  # cube centre above this (m) = off the table


@dataclass(frozen=True)
class Task:
    """One instruction of the family.

    kind ``pick``: ``arm`` lifts ``cube``; kind ``handover``: ``arm`` picks ``cube`` up and hands
    it to the other arm, which ends holding it.
    """

    name: str
    instruction: str
    cube: str
    arm: str
    kind: str = "pick"

    @property
    def other_cube(self) -> str:
        return next(c for c in COLORS if c != self.cube)

    @property
    def other_arm(self) -> str:
        return next(a for a in ARM_SIDES if a != self.arm)

    @property
    def final_arm(self) -> str:
        """The arm that holds the cube at the end."""
        return self.other_arm if self.kind == "handover" else self.arm

    # ------------------------------------------------------------- layout
    @staticmethod
    def sample_layout(rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Cube centres (x, y) per colour; identical for every task given the same rng state."""
        while True:
            p = {c: np.array([rng.uniform(*LAYOUT_X), rng.uniform(*LAYOUT_Y)]) for c in COLORS}
            if abs(p["red"][0] - p["blue"][0]) >= MIN_DX:
                return p

    # ------------------------------------------------------------ outcome
    def success(self, sim) -> bool:
        """Target cube lifted and held by the final arm only; the other cube still on the table."""
        z = sim.cube_position(self.cube)[2]
        other_z = sim.cube_position(self.other_cube)[2]
        return bool(
            z > LIFT_HEIGHT
            and arm_touches(sim, self.final_arm, self.cube)
            and not arm_touches(sim, self.other_arm if self.kind == "pick" else self.arm, self.cube)
            and other_z < OFF_TABLE
        )

    def monitor(self, sim) -> TaskMonitor:
        return TaskMonitor(self, sim)


class TaskMonitor:
    """Tracks an episode for the "instruction followed" predicate (a grasp may still fail).

    Followed = the instructed arm went to the instructed cube (TCP within ``ENGAGE``), no arm went
    to the other cube and it did not move, and (pick) the other arm did not go to the target cube,
    or (handover) the receiving arm did.

    It also keeps what a hand-over's success needs beyond its end state (`handed_over`): the giving
    arm held the cube off the table at some moment. The end state alone (the receiving arm holds
    the lifted cube) is also what the receiving arm reaches by picking the cube itself.
    """

    def __init__(self, task: Task, sim):
        self.task = task
        self.start = {c: sim.cube_position(c) for c in COLORS}
        self.min_dist = {(a, c): np.inf for a in ARM_SIDES for c in COLORS}
        self.max_disp = dict.fromkeys(COLORS, 0.0)
        self.max_z = {c: float(self.start[c][2]) for c in COLORS}
        self.given = False  # hand-over: the giving arm held the cube off the table
        self.update(sim)

    def update(self, sim) -> None:
        cubes = {c: sim.cube_position(c) for c in COLORS}
        for a in ARM_SIDES:
            tcp = sim.tcp_position(a)
            for c in COLORS:
                self.min_dist[a, c] = min(self.min_dist[a, c], float(np.linalg.norm(tcp - cubes[c])))
        for c in COLORS:
            self.max_disp[c] = max(self.max_disp[c], float(np.linalg.norm(cubes[c] - self.start[c])))
            self.max_z[c] = max(self.max_z[c], float(cubes[c][2]))
        t = self.task
        if t.kind == "handover" and not self.given and cubes[t.cube][2] > OFF_TABLE:
            self.given = arm_touches(sim, t.arm, t.cube)

    def engaged(self, arm: str, cube: str) -> bool:
        return self.min_dist[arm, cube] < ENGAGE

    def progress(self) -> dict[str, float]:
        """Graded progress, for learning curves where success is still 0: ``reach_m``, the closest
        the instructed arm's TCP came to the instructed cube's centre (a grasp needs about
        ``ENGAGE``); ``lift_m``, the highest that cube rose above its start (success needs it above
        ``LIFT_HEIGHT``); ``reach_other_m``, the closest the instructed arm came to the other cube (a
        policy that ignores the colour word goes there instead)."""
        t = self.task
        return {"reach_m": self.min_dist[t.arm, t.cube], "lift_m": self.max_z[t.cube] - float(self.start[t.cube][2]),
                "reach_other_m": self.min_dist[t.arm, t.other_cube]}

    def handed_over(self) -> bool:
        """Pick: True. Hand-over: the giving arm held the cube off the table at some moment so far."""
        return self.task.kind != "handover" or self.given

    def instruction_followed(self) -> bool:
        t = self.task
        ok = self.engaged(t.arm, t.cube)
        ok &= not any(self.engaged(a, t.other_cube) for a in ARM_SIDES)
        ok &= self.max_disp[t.other_cube] < MOVED
        if t.kind == "pick":
            ok &= not self.engaged(t.other_arm, t.cube)
        else:
            ok &= self.engaged(t.other_arm, t.cube)
        return bool(ok)


def arm_touches(sim, arm: str, cube: str) -> bool:
    """True when a finger of ``arm`` is in contact with ``cube``."""
    m, d = sim.model, sim.data
    cube_id = m.geom(f"{cube}_cube").id
    fingers = {
        m.geom(f"vx300s_{arm}/10_{f}_gripper_finger").id for f in ("left", "right")
    }
    for i in range(d.ncon):
        g1, g2 = d.contact[i].geom1, d.contact[i].geom2
        if (g1 == cube_id and g2 in fingers) or (g2 == cube_id and g1 in fingers):
            return True
    return False


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("pick_red_left", "pick up the red cube with the left arm", "red", "left"),
        Task("pick_red_right", "pick up the red cube with the right arm", "red", "right"),
        Task("pick_blue_left", "pick up the blue cube with the left arm", "blue", "left"),
        Task("pick_blue_right", "pick up the blue cube with the right arm", "blue", "right"),
        Task("handover_red_left_to_right", "hand the red cube from the left arm to the right arm",
             "red", "left", "handover"),
        Task("handover_blue_right_to_left", "hand the blue cube from the right arm to the left arm",
             "blue", "right", "handover"),
    )
}
TASK_NAMES = tuple(TASKS)
INSTRUCTIONS = {t.instruction: t for t in TASKS.values()}


def get_task(task) -> Task:
    """Task from a :class:`Task`, a task name, an instruction string, or ``None`` (first task)."""
    if task is None:
        return TASKS[TASK_NAMES[0]]
    if isinstance(task, Task):
        return task
    if task in TASKS:
        return TASKS[task]
    if task in INSTRUCTIONS:
        return INSTRUCTIONS[task]
    raise KeyError(f"unknown task {task!r}; known: {', '.join(TASK_NAMES)}")


# ------------------------------------------------------------------------------------ phrasings

PICK_WORDS = ("pick up", "grab", "lift", "take")
HAND_WORDS = ("hand", "pass", "transfer")  # "<hand> the cube from A to B"
GIVE_WORDS = ("hand", "pass", "give")  # "... and <give> it to B"
CUBE_WORDS = ("cube", "block")
ARM_WORDS = ("arm", "hand", "gripper")
#: {cube} = "the red cube", {arm} = "the left arm", {other} = "the right arm" (same arm word)
PICK_TEMPLATES = (
    "{pick} {cube} with {arm}",
    "{pick} {cube} using {arm}",
    "with {arm}, {pick} {cube}",
    "use {arm} to {pick} {cube}",
    "please {pick} {cube} with {arm}",
    "{pick} {cube} with {arm}, please",
    "with {arm}, please {pick} {cube}",
    "please use {arm} to {pick} {cube}",
    "could you {pick} {cube} with {arm}?",
    "could you use {arm} to {pick} {cube}?",
)
HANDOVER_TEMPLATES = (
    "{hand} {cube} from {arm} to {other}",
    "{pick} {cube} with {arm} and {give} it to {other}",
    "with {arm}, {pick} {cube} and {give} it to {other}",
    "use {arm} to {pick} {cube}, then {give} it to {other}",
    "please {hand} {cube} from {arm} to {other}",
    "{hand} {cube} from {arm} to {other}, please",
    "could you {hand} {cube} from {arm} to {other}?",
    "please {pick} {cube} with {arm} and {give} it to {other}",
    "could you {pick} {cube} with {arm} and {give} it to {other}?",
)
HELDOUT_EVERY = 8
CANONICAL_SHARE = 0.25  # generated episodes that keep the canonical instruction


def _hash(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


@cache
def phrasings(task_name: str) -> tuple[str, ...]:
    """Every phrasing of a task, the canonical instruction first, the rest in template order."""
    t = TASKS[task_name]
    out = dict.fromkeys([t.instruction])
    for tpl in PICK_TEMPLATES if t.kind == "pick" else HANDOVER_TEMPLATES:
        for pick, hand, give, cw, aw in itertools.product(PICK_WORDS, HAND_WORDS, GIVE_WORDS, CUBE_WORDS, ARM_WORDS):
            out[tpl.format(pick=pick, hand=hand, give=give, cube=f"the {t.cube} {cw}", arm=f"the {t.arm} {aw}",
                           other=f"the {t.other_arm} {aw}")] = None
    return tuple(out)


def is_heldout(task_name: str, text: str) -> bool:
    return text != TASKS[task_name].instruction and _hash(text) % HELDOUT_EVERY == 0


def training_phrasings(task_name: str) -> tuple[str, ...]:
    return tuple(p for p in phrasings(task_name) if not is_heldout(task_name, p))


def heldout_phrasings(task_name: str) -> tuple[str, ...]:
    """The held-out phrasings, ordered by their hash (a fixed shuffle: any prefix mixes templates)."""
    return tuple(sorted((p for p in phrasings(task_name) if is_heldout(task_name, p)), key=_hash))


def episode_instruction(task_name: str, seed: int, canonical_share: float = CANONICAL_SHARE) -> str:
    """The instruction of a generated episode: the canonical one with probability
    ``canonical_share``, else a uniformly drawn training phrasing; a function of (task, seed)."""
    rng = np.random.default_rng([int(seed), zlib.crc32(task_name.encode())])
    if rng.random() < canonical_share:
        return TASKS[task_name].instruction
    train = training_phrasings(task_name)
    return train[int(rng.integers(len(train)))]


def read_instruction_file(path) -> dict[str, list[str]]:
    """``{task name: [instruction, ...]}`` from a JSON file (e.g. config/eval/heldout_phrasings.json);
    ValueError naming the file and what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON object {{task name: [instruction, ...]}}, "
                         f"got {type(data).__name__ if data else 'an empty one'}")
    for name, items in data.items():
        if name not in TASKS:
            raise ValueError(f"{path}: unknown task {name!r}; known: {', '.join(TASK_NAMES)}")
        if not isinstance(items, list) or not items:
            raise ValueError(f"{path}: {name}: expected a non-empty list of instructions")
        bad = [i for i in items if not isinstance(i, str) or not i.strip()]
        if bad:
            raise ValueError(f"{path}: {name}: instructions must be non-empty strings, got {bad[0]!r}")
    return data


if __name__ == "__main__":
    if sys.argv[1:] != ["heldout"]:
        sys.exit("usage: python -m ki_vla_ros.sim.tasks heldout > config/eval/heldout_phrasings.json")
    print(json.dumps({n: list(heldout_phrasings(n)) for n in TASK_NAMES}, indent=1))
