"""Text tokenizer and the prompt builder: token layout, state modes, reserved ids, collate."""

import numpy as np
import pytest
import torch

from ki_vla_ros.model import FAST, KIVLA, PAD, PREFIX, TEXT, ModelConfig
from ki_vla_ros.tokenize import PromptBuilder, TextTokenizer, collate, discretize_state

CORPUS = ["pick up the red cube", "put the cube in the bowl", "what color is the cube? red",
          "Task: , State: ;\nAction: ", "-1 0 1 2 3 4 5 6 7 8 9 10 100 255"] * 20


@pytest.fixture(scope="module")
def text_tok():
    return TextTokenizer.train(CORPUS, vocab_size=300)


def cfg(mode="text"):
    return ModelConfig.preset("tiny", state_mode=mode, max_prefix_tokens=64)


def test_text_tokenizer_round_trip_and_save(text_tok, tmp_path):
    s = "pick up the blue cube — ünïcode"
    assert text_tok.decode(text_tok.encode(s)) == s
    assert (text_tok.pad_id, text_tok.bos_id, text_tok.eos_id) == (0, 1, 2)
    text_tok.save(tmp_path / "tokenizer.json")
    loaded = TextTokenizer.load(tmp_path)
    assert loaded.encode(s) == text_tok.encode(s) and loaded.vocab_size == text_tok.vocab_size


def test_sentencepiece_model_loads(tmp_path):
    """A SentencePiece .model (the format of published Gemma / PaliGemma tokenizers), trained here
    with Gemma's special ids (pad 0, eos 1, bos 2), loads with its own ids and round-trips text."""
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"pick up the {c} cube with the {a} arm" for c in ("red", "blue", "green")
                                for a in ("left", "right")) * 20)
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "tokenizer"), vocab_size=60,
                                   pad_id=0, eos_id=1, bos_id=2, unk_id=3, model_type="bpe")
    tok = TextTokenizer.load(tmp_path / "tokenizer.model")
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.vocab_size) == (0, 1, 2, 60)
    ids = tok.encode("pick up the blue cube")
    assert ids and min(ids) > 3 and tok.decode(ids) == "pick up the blue cube"
    bad = tmp_path / "broken.model"
    bad.write_bytes(b"\0")
    with pytest.raises((RuntimeError, OSError)):
        TextTokenizer.load(bad)


def test_discretize_state_matches_lerobot_bins():
    """LeRobot's rule by hand: edges e_k = -1 + 2k/256 (k = 0..255), bin = #(edges <= x) - 1.
    -1.5 is below every edge: -1; -1 = e_0: 0; 0 = e_128: 128; 0.99 lies in [e_254, e_255) =
    [0.984375, 0.9921875): 254; e_255 itself, 1 and 1.5 are at or above the last edge: 255."""
    s = np.array([-1.5, -1.0000001, -1.0, -0.999, 0.0, 0.99, 0.9921875, 1.0, 1.5])
    np.testing.assert_array_equal(discretize_state(s), [-1, -1, 0, 0, 128, 254, 255, 255, 255])


def test_layout_kinds_and_loss_mask(text_tok):
    c = cfg()
    pb = PromptBuilder(text_tok, c)
    ex = pb.build("pick up the red cube", state=np.array([0.0, 0.5]), action_tokens=[0, 5, 255])
    tokens, kind, loss = ex["tokens"], ex["token_kind"], ex["loss_mask"]
    assert tokens[0] == text_tok.bos_id
    n_prefix = int((kind == PREFIX).sum())
    assert (kind[:n_prefix] == PREFIX).all()
    # LeRobot's π0.5 prompt, "Action: " once, at the end of the prefix
    # (the 2-D state zero-padded to state_dim 8 as LeRobot pads to max_state_dim: bin 128)
    pad = " 128" * 6
    assert text_tok.decode(tokens[1:n_prefix]) == f"Task: pick up the red cube, State: 128 192{pad};\nAction: "
    fast = tokens[kind == FAST]
    assert fast.tolist() == [c.vocab_size - 256, c.vocab_size - 251, c.vocab_size - 1, text_tok.eos_id]
    assert pb.action_tokens_from_ids(fast[:-1]) == [0, 5, 255]  # reserved range at the END
    assert loss[kind == FAST].all() and not loss[kind == PREFIX].any()
    # the inference prefix is exactly the training prefix
    inf_tokens, inf_mask = pb.inference_prefix("pick up the red cube", np.array([0.0, 0.5]))
    np.testing.assert_array_equal(inf_tokens[inf_mask], tokens[:n_prefix])
    assert inf_tokens.shape == (c.max_prefix_tokens,)
    # a language target: after the robot prefix, before the action tokens
    ex = pb.build("pick up the red cube", state=np.array([0.0, 0.5]), action_tokens=[7], answer="red")
    ans = ex["tokens"][ex["token_kind"] == TEXT]
    assert text_tok.decode(ans[:-1]) == "red" and ans[-1] == text_tok.eos_id
    assert ex["loss_mask"][ex["token_kind"] == TEXT].all()
    # VLM data: no state, no marker
    vlm = pb.build("what color is the cube?", None, answer="red")
    assert text_tok.decode(vlm["tokens"][1:][vlm["token_kind"][1:] == PREFIX]) == "Task: what color is the cube?;\n"
    with pytest.raises(ValueError, match="need a robot example"):
        pb.build("go", None, action_tokens=[1])


def test_state_modes(text_tok):
    state = np.array([-1.0, 0.0, 0.99, -1.5])
    c = cfg("tokens")
    tok_mode = PromptBuilder(text_tok, c).prefix("go", state)
    # bin -1 (below the range) becomes the first reserved id, never one below the range
    assert [t - c.state_token_base for t in tok_mode if c.state_token_base <= t < c.fast_token_base] == [0, 128, 254, 0,
                                                                                                     *[128] * 4]
    assert text_tok.decode([t for t in tok_mode if t < c.state_token_base][1:]) == "Task: go, State: ;\nAction: "
    text_mode = PromptBuilder(text_tok, cfg()).prefix("go", state)
    assert text_tok.decode(text_mode[1:]) == "Task: go, State: 0 128 254 -1 128 128 128 128;\nAction: "
    cont = PromptBuilder(text_tok, cfg("continuous")).prefix("go", state)
    assert text_tok.decode(cont[1:]) == "Task: go;\nAction: "
    assert text_tok.decode(PromptBuilder(text_tok, cfg()).prefix("go", None)[1:]) == "Task: go;\n"


def test_limits(text_tok):
    pb = PromptBuilder(text_tok, cfg())
    long = pb.prefix("pick " * 100, np.zeros(2))
    assert len(long) == cfg().max_prefix_tokens
    assert text_tok.decode(long).endswith(f", State: {' '.join(['128'] * 8)};\nAction: ")
    with pytest.raises(ValueError, match="max_target_tokens"):
        pb.build("go", np.zeros(2), action_tokens=list(range(100)))
    with pytest.raises(ValueError, match="num_fast_tokens"):
        pb.build("go", np.zeros(2), action_tokens=[256])
    with pytest.raises(ValueError, match="reserves ids"):
        PromptBuilder(text_tok, cfg().replace(vocab_size=600))  # text ids must stay below 88


def test_collate_feeds_the_model(text_tok):
    c = cfg()
    pb = PromptBuilder(text_tok, c)
    rng = np.random.default_rng(0)
    h, d, s = c.action_horizon, c.action_dim, c.image_size

    def example(answer=None, acts=None, has_actions=True):
        ex = pb.build("pick up the cube", state=rng.uniform(-1, 1, 3), action_tokens=acts, answer=answer)
        ex.update(images=rng.uniform(-1, 1, (2, 3, s, s)), image_mask=np.array([True, False]),
                  state=np.zeros(c.state_dim), actions=rng.uniform(-1, 1, (h, d)),
                  action_mask=np.array(has_actions), action_dim_mask=np.arange(d) < 5)
        return ex

    exs = [example(answer="red", has_actions=False), example(acts=[1, 2, 3]), example(answer="ok", acts=[4])]
    batch = collate(exs)
    n = max(len(e["tokens"]) for e in exs)
    assert batch["tokens"].shape == (3, n) and batch["images"].dtype == torch.float32
    assert (batch["token_kind"][0, len(exs[0]["tokens"]):] == PAD).all()
    assert batch["action_mask"].tolist() == [False, True, True]
    out = KIVLA(c).compute_loss(batch)
    assert all(torch.isfinite(v) for v in out.values()) and out["text_loss"] > 0 and out["fast_loss"] > 0
    assert collate(exs, pad_to=n + 5)["tokens"].shape == (3, n + 5)
    with pytest.raises(ValueError, match="pad_to"):
        collate(exs, pad_to=2)
