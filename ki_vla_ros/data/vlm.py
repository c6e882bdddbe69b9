"""Vision-language co-training data: JSONL records of image, prompt and answer.

One JSON object per line::

    {"image": "images/scene_00001.png", "prompt": "Where is the red cube?", "answer": "on the left"}

``image`` is a path relative to the JSONL file's folder (or absolute); ``images`` (a list) gives
several views, which fill the model's camera slots in order. Captions, VQA and boxes-as-text are
all just (prompt, answer) pairs; an optional ``kind`` (question type) is kept for per-type
evaluation (`train/vqa_eval.py`). Other keys are ignored. A record without an image, prompt or
answer, or whose image cannot be read, raises ValueError naming the file and line.

The held-out split is by image (records about the same image stay on one side), so the evaluation
never scores a question about an image the model trained on.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ki_vla_ros.runtime.preprocess import resize_with_pad_uint8


@dataclass
class VLMRecord:
    images: list[Path]
    prompt: str
    answer: str
    kind: str = ""


def load_vlm_jsonl(path: str | Path) -> list[VLMRecord]:
    path = Path(path)
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise FileNotFoundError(f"{path}: no .jsonl files")
    out = []
    for file in files:
        for n, line in enumerate(file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            where = f"{file}:{n}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not valid JSON ({exc})") from None
            imgs = rec.get("images") or ([rec["image"]] if rec.get("image") else [])
            if not imgs or not rec.get("prompt") or "answer" not in rec:
                raise ValueError(f"{where}: a record needs 'image' (or 'images'), 'prompt' and 'answer'")
            out.append(VLMRecord([(file.parent / p) for p in imgs], str(rec["prompt"]), str(rec["answer"]),
                                 str(rec.get("kind", ""))))
    return out


def split_by_image(records: list[VLMRecord], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): whole images go to the held-out side (stable hash + seed)."""
    def h(r):
        return zlib.crc32(f"{seed}:{r.images[0].name}".encode()) / 2**32

    hashes = [h(r) for r in records]
    cut = val_fraction
    if val_fraction > 0 and len({r.images[0] for r in records}) >= 2 and min(hashes) >= cut:
        cut = min(hashes) + 1e-12  # at least one image held out
    train = [i for i, x in enumerate(hashes) if x >= cut]
    val = [i for i, x in enumerate(hashes) if x < cut]
    return train, val


def read_image(path: Path, size: int) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path}: cannot read image")
    return resize_with_pad_uint8(np.ascontiguousarray(bgr[..., ::-1]), size)
