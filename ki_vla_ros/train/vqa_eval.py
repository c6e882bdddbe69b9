"""VQA accuracy of any model folder or training checkpoint: greedy answers, exact match, per question type.

    python -m ki_vla_ros.train.vqa_eval --model models/vlm_base --data data/vqa/heldout/vlm.jsonl \\
        --train-data data/vqa/train/vlm.jsonl [--limit 2000] [--out vqa.json]

``--model``: a model folder (``model.yaml``), a checkpoint folder (``trainer.json``; its EMA
weights when it has them) or a run folder (its latest checkpoint). ``--data``: VLM JSONL records
(``ki_vla_ros.data.vlm``) with a ``kind`` per record, e.g. the held-out split of
``ki_vla_ros.sim.vlm_data``. Answers are decoded greedily from the model's text ids (at most
``max_new_tokens``, up to ``<eos>``), exactly as trained: the image(s) fill the first camera
slots, the prompt is the prefix, the answer follows as TEXT tokens. A prediction is right when
it equals the reference after lower-casing and collapsing white space.

The majority baseline answers every question of a type with that type's most frequent answer in
``--train-data`` (or, without it, in the evaluated records themselves: an upper bound of that
baseline). Prints and writes ``{"overall": {...}, "per_kind": {kind: {"accuracy", "n",
"majority_answer", "majority_baseline"}}, "examples": [...]}``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ki_vla_ros.data.examples import ExampleBuilder
from ki_vla_ros.data.vlm import VLMRecord, load_vlm_jsonl, read_image
from ki_vla_ros.model import KIVLA
from ki_vla_ros.model.masks import PAD, PREFIX, TEXT
from ki_vla_ros.tokenize.prompt import PromptBuilder, collate
from ki_vla_ros.tokenize.text import TextTokenizer


def normalise(text: str) -> str:
    return " ".join(str(text).lower().split())


def load_for_vqa(path: str | Path, use_ema: bool = True) -> tuple[KIVLA, TextTokenizer, list[str]]:
    """(model in eval mode, its text tokenizer, its camera slots) from a model folder, a checkpoint
    folder or a run folder."""
    path = Path(path)
    if (path / "model.yaml").is_file():
        from ki_vla_ros.runtime.model_dir import load_model_dir

        b = load_model_dir(path)
        return b.model.eval(), b.text_tokenizer, list(b.layout.camera_names)
    from safetensors.torch import load_file

    from ki_vla_ros.configio import load_config
    from ki_vla_ros.model import ModelConfig
    from ki_vla_ros.runtime.model_dir import Layout
    from ki_vla_ros.train.data_setup import load_text_tokenizer
    from ki_vla_ros.train.to_model_dir import resolve_checkpoint

    ck = resolve_checkpoint(path)
    model = KIVLA(load_config(ModelConfig, ck / "assets" / "model.yaml"))
    model.load_state_dict(load_file(str(ck / "model.safetensors")))
    if use_ema and (ck / "ema.safetensors").is_file():
        model.load_state_dict(load_file(str(ck / "ema.safetensors")), strict=False)
    layout = load_config(Layout, ck / "assets" / "layout.yaml")
    return model.eval(), load_text_tokenizer(ck / "assets"), list(layout.camera_names)


@torch.no_grad()
def greedy_answers(model: KIVLA, examples: list[dict], eos_id: int, max_new_tokens: int = 12) -> list[list[int]]:
    """Greedy decoding of the answer ids (without <eos>) for examples of `ExampleBuilder.vlm`
    (their images and inference prefix). Every step reruns the model on prefix + answer so far:
    the same computation as the teacher-forced training pass."""
    c = model.config
    batch = collate([{k: e[k] for k in ("images", "image_mask", "state")} | {
        "tokens": e["prefix_tokens"][e["prefix_mask"]], "token_kind": np.full(int(e["prefix_mask"].sum()), PREFIX),
        "loss_mask": np.zeros(int(e["prefix_mask"].sum()), bool)} for e in examples])
    b, lp = batch["tokens"].shape
    tokens = torch.cat([batch["tokens"], torch.zeros(b, max_new_tokens, dtype=torch.long)], 1)
    kinds = torch.cat([batch["token_kind"], torch.full((b, max_new_tokens), PAD, dtype=torch.long)], 1)
    pos = (batch["token_kind"] != PAD).sum(1)  # where each row's next token goes
    done = torch.zeros(b, dtype=torch.bool)
    rows = torch.arange(b)
    out: list[list[int]] = [[] for _ in range(b)]
    for _ in range(max_new_tokens):
        n = int(pos.max()) + 1
        logits, _ = model.outputs(batch["images"], batch["image_mask"], tokens[:, :n], kinds[:, :n], batch["state"])
        nxt = logits[rows, pos - 1, : c.text_vocab_limit].argmax(-1)  # answers are text ids
        for i in torch.nonzero(~done).flatten().tolist():
            if int(nxt[i]) == eos_id:
                done[i] = True
            else:
                out[i].append(int(nxt[i]))
                tokens[i, pos[i]], kinds[i, pos[i]] = nxt[i], TEXT
                pos[i] += 1
        if done.all():
            break
    return out


def predict(model: KIVLA, text_tokenizer: TextTokenizer, camera_slots: list[str], records: list[VLMRecord],
            batch_size: int = 32, max_new_tokens: int = 12) -> list[str]:
    """Greedy answer strings for `records` (images read and resized as in training)."""
    builder = ExampleBuilder(model.config, PromptBuilder(text_tokenizer, model.config), camera_slots, {})
    preds: list[str] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start:start + batch_size]
        examples = [builder.vlm([read_image(p, model.config.image_size) for p in r.images], r.prompt, r.answer)
                    for r in chunk]
        preds += [text_tokenizer.decode(ids) for ids in greedy_answers(model, examples, text_tokenizer.eos_id,
                                                                       max_new_tokens)]
    return preds


def vqa_accuracy(records: list[VLMRecord], predictions: list[str],
                 train_records: list[VLMRecord] | None = None) -> dict:
    """Exact-match accuracy overall and per `kind`, beside the majority-answer baseline."""
    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} records but {len(predictions)} predictions")
    if not records:
        raise ValueError("no records to score")
    ref = train_records if train_records else records
    majority = {k: Counter(normalise(r.answer) for r in ref if r.kind == k).most_common(1)
                for k in {r.kind for r in records}}
    majority = {k: (v[0][0] if v else "") for k, v in majority.items()}
    per: dict[str, dict] = {}
    right = [normalise(p) == normalise(r.answer) for r, p in zip(records, predictions)]
    base = [majority[r.kind] == normalise(r.answer) for r in records]
    for k in sorted(majority):
        idx = [i for i, r in enumerate(records) if r.kind == k]
        per[k] = {"accuracy": float(np.mean([right[i] for i in idx])), "n": len(idx),
                  "majority_answer": majority[k], "majority_baseline": float(np.mean([base[i] for i in idx]))}
    overall = {"accuracy": float(np.mean(right)), "n": len(records), "majority_baseline": float(np.mean(base)),
               "mean_over_kinds": float(np.mean([v["accuracy"] for v in per.values()])),
               "baseline_mean_over_kinds": float(np.mean([v["majority_baseline"] for v in per.values()]))}
    return {"overall": overall, "per_kind": per}


def evaluate_vqa(model_path, data, train_data=None, limit: int = 0, batch_size: int = 32,
                 max_new_tokens: int = 12, seed: int = 0, use_ema: bool = True, threads: int = 0) -> dict:
    """Score the model at `model_path` on the records of `data` (`limit` > 0: that many, drawn
    evenly with `seed`)."""
    if threads:
        torch.set_num_threads(threads)
    records = load_vlm_jsonl(data)
    if limit and limit < len(records):
        pick = np.sort(np.random.default_rng(seed).choice(len(records), size=limit, replace=False))
        records = [records[i] for i in pick]
    model, tok, slots = load_for_vqa(model_path, use_ema)
    preds = predict(model, tok, slots, records, batch_size, max_new_tokens)
    result = vqa_accuracy(records, preds, load_vlm_jsonl(train_data) if train_data else None)
    result["model"], result["data"] = str(model_path), str(data)
    result["examples"] = [{"kind": r.kind, "prompt": r.prompt, "answer": r.answer, "predicted": p,
                           "image": str(r.images[0])} for r, p in list(zip(records, preds))[:20]]
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model folder, checkpoint folder or run folder")
    p.add_argument("--data", required=True, help="VLM JSONL (file or folder) with a 'kind' per record")
    p.add_argument("--train-data", default=None, help="training JSONL for the majority-answer baseline")
    p.add_argument("--limit", type=int, default=0, help="score this many records (0: all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--no-ema", action="store_true", help="checkpoints: the raw weights, not the EMA")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=None, help="write the result JSON here")
    a = p.parse_args(argv)
    try:
        res = evaluate_vqa(a.model, a.data, a.train_data, a.limit, a.batch_size, a.max_new_tokens,
                           use_ema=not a.no_ema, threads=a.threads)
    except (FileNotFoundError, ValueError) as exc:
        print(f"vqa_eval: {exc}")
        return 2
    text = json.dumps(res, indent=1)
    if a.out:
        Path(a.out).write_text(text)
    o = res["overall"]
    print(f"VQA exact match {o['accuracy']:.3f} (majority baseline {o['majority_baseline']:.3f}) on {o['n']} questions")
    for k, v in res["per_kind"].items():
        print(f"  {k:12s} {v['accuracy']:.3f}  (baseline {v['majority_baseline']:.3f}, n {v['n']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
