"""`tokenizers.text_tokenizer_path`: a published text tokenizer (SentencePiece .model or tokenizer.json)
instead of a BPE trained on the run's texts; checked against the model's text id range."""

import pytest
import torch

from ki_vla_ros.configio import ConfigError, from_dict
from ki_vla_ros.data.synthetic import tiny_train_config, write_tiny_dataset
from ki_vla_ros.tokenize.text import TextTokenizer
from ki_vla_ros.train.config import TrainConfig
from ki_vla_ros.train.data_setup import load_text_tokenizer
from ki_vla_ros.train.trainer import train

spm = pytest.importorskip("sentencepiece")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tok_data"))


def _sentencepiece(path, vocab_size, pad_id=0):
    corpus = path.parent / f"{path.stem}_corpus.txt"
    corpus.write_text("\n".join(f"pick up the {c} cube with the {a} arm. Which colour is the cube? {c} on the {a}"
                                for c in ("red", "blue", "green") for a in ("left", "right")) * 20)
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(path.with_suffix("")), vocab_size=vocab_size,
                                   pad_id=pad_id, eos_id=1, bos_id=2, unk_id=3, model_type="bpe",
                                   byte_fallback=True)  # Gemma's ids and byte fallback
    return path


def _cfg(data, run_dir, tok, **fields):
    tokenizers = {"fast_vocab_size": 200, "fit_chunks": 200, "text_tokenizer_path": str(tok)}
    # this small SentencePiece spells "State: ... ;\n" in more pieces than the run's own BPE: more prefix room
    model = {"preset": "tiny", "overrides": {"max_target_tokens": 96, "max_prefix_tokens": 128}}
    return tiny_train_config(data, run_dir, steps=2, eval_every=0, checkpoint_every=2, tokenizers=tokenizers,
                             model=model, **fields)


def test_sentencepiece_tokenizer_trains(data, tmp_path):
    tok_path = _sentencepiece(tmp_path / "tokenizer.model", 380)
    run_dir = tmp_path / "run"
    cfg = from_dict(TrainConfig, _cfg(data, run_dir, tok_path))
    summary = train(cfg, log=lambda *a: None)
    assert summary["steps"] == 2
    assets = run_dir / "assets"
    assert (assets / "text_tokenizer.model").read_bytes() == tok_path.read_bytes()
    assert not (assets / "text_tokenizer.json").exists()
    tok = load_text_tokenizer(run_dir / "checkpoints" / "step_000002" / "assets")
    ref = TextTokenizer.load(tok_path)
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.vocab_size) == (0, 1, 2, 380)
    assert tok.encode("pick up the red cube") == ref.encode("pick up the red cube")
    assert torch.isfinite(torch.tensor(summary["final_eval"]["val_text_loss"]))


def test_published_tokenizer_json_is_copied(data, tmp_path):
    src = tmp_path / "tokenizer.json"
    TextTokenizer.train(["pick up the red cube", "Which colour is the cube? red"], vocab_size=300).save(src)
    run_dir = tmp_path / "run"
    train(from_dict(TrainConfig, _cfg(data, run_dir, src)), log=lambda *a: None)
    assert (run_dir / "assets" / "text_tokenizer.json").read_bytes() == src.read_bytes()


def test_text_tokenizer_errors_name_the_key(data, tmp_path):
    with pytest.raises((ConfigError, ValueError), match="text_tokenizer_path"):
        from_dict(TrainConfig, _cfg(data, tmp_path / "a", tmp_path / "missing.model"))
    too_big = _sentencepiece(tmp_path / "big.model", 380)
    cfg = _cfg(data, tmp_path / "b", too_big)
    cfg["model"]["overrides"]["vocab_size"] = 800  # text ids below 800 - 256 FAST - 256 state bins = 288
    cfg = from_dict(TrainConfig, cfg)
    with pytest.raises(ValueError, match=r"tokenizers\.text_tokenizer_path: .* encodes .* with id \d+, inside the "
                                         r"model's state/action id range \(text ids must be < 288"):
        train(cfg, log=lambda *a: None)
    no_pad = _sentencepiece(tmp_path / "nopad.model", 300, pad_id=-1)
    with pytest.raises(ValueError, match=r"tokenizers\.text_tokenizer_path: .* no pad token"):
        train(from_dict(TrainConfig, _cfg(data, tmp_path / "c", no_pad)), log=lambda *a: None)
    with pytest.raises((ConfigError, ValueError), match="text_vocab_size"):
        bad = _cfg(data, tmp_path / "d", no_pad)
        bad["tokenizers"]["text_vocab_size"] = 100
        from_dict(TrainConfig, bad)


def test_a_larger_tokenizer_whose_tail_the_run_never_uses_trains(data, tmp_path):
    """Like Gemma's tokenizer under π0.5, whose action ids overlay its rarely used tail: more ids than
    the model's text range is fine while the run's text never produces one of them."""
    from tokenizers import AddedToken, Tokenizer

    src = tmp_path / "tokenizer.json"
    TextTokenizer.train(["pick up the red cube", "Which colour is the cube? red"], vocab_size=280).save(src)
    tok = Tokenizer.from_file(str(src))
    tok.add_tokens([AddedToken(f"<unused{i}>", special=True) for i in range(20)])  # ids 280..299, never produced
    tok.save(str(src))
    assert TextTokenizer.load(src).vocab_size == 300
    cfg = _cfg(data, tmp_path / "run", src)
    cfg["model"]["overrides"]["vocab_size"] = 800  # text ids below 288
    train(from_dict(TrainConfig, cfg), log=lambda *a: None)
