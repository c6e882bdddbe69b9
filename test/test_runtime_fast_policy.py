"""FAST-token decoding as a policy: cached greedy decoding against the uncached model, the ids ->
chunk path against the tokenizer, a model trained on one chunk decoding it back, and the errors."""

import numpy as np
import pytest
import torch

from ki_vla_ros.control.policy_loader import load_policy
from ki_vla_ros.model.masks import FAST, PREFIX
from ki_vla_ros.runtime import BackendError, Layout, ModelDirError, Observation
from ki_vla_ros.runtime.fast_policy import FastTokenPolicy, RelaxedFastTokenPolicy, greedy_action_ids
from ki_vla_ros.runtime.init_model import init_model_dir, smooth_chunks
from ki_vla_ros.runtime.model_dir import load_model_dir, save_model_dir
from ki_vla_ros.tokenize.fast import FastDecodeError
from ki_vla_ros.tokenize.prompt import collate

LAYOUT = Layout(["cam_high", "cam_left_wrist"], [f"q{i}" for i in range(6)], [f"a{i}" for i in range(6)])
SPEC = "ki_vla_ros.runtime.fast_policy:FastTokenPolicy"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return init_model_dir(tmp_path_factory.mktemp("fast") / "model", LAYOUT, preset="tiny", seed=3)


def observation(seed=0, instruction="pick up the red cube"):
    rng = np.random.default_rng(seed)
    return Observation(images={"cam_high": rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)},  # wrist missing
                       state=rng.uniform(-0.5, 0.5, 6), instruction=instruction)


def test_cached_greedy_decoding_is_the_uncached_argmax(folder):
    """Every decoded id is the argmax (over action ids and <eos>) of the full model run on prefix +
    ids so far, with a padded prompt and a missing camera; a dominant <eos> ends decoding at once."""
    policy = FastTokenPolicy.load(folder)
    model, c, eos = policy.model, policy.config, policy.eos_id
    with torch.no_grad():
        model.lm_head.weight[eos] = 0.0  # <eos> logit 0: random action logits beat it
    inputs = [torch.as_tensor(a) for a in policy.model_inputs(observation())]
    ids, ended = greedy_action_ids(model, *inputs, eos, max_new_tokens=6)
    assert len(ids) == 6 and not ended
    images, image_mask, tokens, token_mask, state = inputs
    prefix = tokens[0][token_mask[0]]
    row = torch.cat([prefix, torch.tensor(ids)])[None]
    kinds = torch.tensor([PREFIX] * len(prefix) + [FAST] * len(ids))[None]
    logits, _ = model.outputs(images, image_mask, row, kinds, state)
    allowed = torch.cat([torch.arange(c.fast_token_base, c.vocab_size), torch.tensor([eos])])
    steps = logits[0, len(prefix) - 1:-1][:, allowed].argmax(-1)
    assert allowed[steps].tolist() == ids
    seen = []  # the last prefix token's hidden state, as lm_head gets it
    hook = model.lm_head.register_forward_hook(lambda m, args, out: seen.append(args[0][0, len(prefix) - 1]))
    model.outputs(images, image_mask, prefix[None], kinds[:, :len(prefix)], state)
    hook.remove()
    with torch.no_grad():  # <eos> logit |h|² > 0, every action logit 0: <eos> first
        model.lm_head.weight[c.fast_token_base:] = 0.0
        model.lm_head.weight[eos] = seen[0]
    assert greedy_action_ids(model, *inputs, eos, max_new_tokens=6) == ([], True)


def test_chunk_from_ids_is_the_tokenizer_round_trip(folder):
    policy = FastTokenPolicy.load(folder)
    chunk = smooth_chunks(1, policy.action_horizon, 6, seed=11)[0]  # normalised
    tokens = policy.action_tokenizer.encode(chunk)
    actions = policy.chunk_from_ids(policy.prompt.action_ids(tokens), np.zeros(6))
    stats = policy.bundle.norm_stats.actions
    np.testing.assert_allclose(actions, stats.denormalize(policy.action_tokenizer.decode(tokens, len(chunk), 6)))
    assert np.abs(stats.normalize(actions) - chunk).max() < 0.1  # FAST rounding (test_tokenize_fast.py)
    with pytest.raises(FastDecodeError, match="FAST decoding failed: .*coefficients"):
        policy.chunk_from_ids(policy.prompt.action_ids(tokens[:-1]), np.zeros(6))
    with pytest.raises(FastDecodeError, match="FAST decoding failed: .*not in the vocabulary"):
        policy.chunk_from_ids([5, *policy.prompt.action_ids(tokens)], np.zeros(6))  # a text id among the action ids


def test_relaxed_policy_pads_what_the_strict_one_refuses(folder):
    """The relaxed policy (through the node's policy_class hook) turns a sequence one token short
    into the tokenizer's relaxed chunk and says how many coefficients it padded; an exact sequence
    gives the strict chunk and fill 0; the strict policy refuses the short one."""
    relaxed = load_policy(folder, policy_class="ki_vla_ros.runtime.fast_policy:RelaxedFastTokenPolicy")
    strict = FastTokenPolicy.load(folder)
    assert isinstance(relaxed, RelaxedFastTokenPolicy) and relaxed.relaxed and not strict.relaxed
    tok, h, stats = relaxed.action_tokenizer, relaxed.action_horizon, relaxed.bundle.norm_stats.actions
    tokens = tok.encode(smooth_chunks(1, h, 6, seed=12)[0])
    short = tokens[:-1]
    actions = relaxed.chunk_from_ids(relaxed.prompt.action_ids(short), np.zeros(6))
    np.testing.assert_allclose(actions, stats.denormalize(tok.decode(short, h, 6, relaxed=True)))
    assert relaxed.last_fill == h * 6 - tok.count(short) > 0
    np.testing.assert_allclose(relaxed.chunk_from_ids(relaxed.prompt.action_ids(tokens), np.zeros(6)),
                               strict.chunk_from_ids(strict.prompt.action_ids(tokens), np.zeros(6)))
    assert relaxed.last_fill == 0
    with pytest.raises(FastDecodeError, match="FAST decoding failed: .*coefficients"):
        strict.chunk_from_ids(strict.prompt.action_ids(short), np.zeros(6))


def test_a_model_trained_on_one_chunk_decodes_it(tmp_path, folder):
    """Backbone trained a few steps on one robot example (prefix ';\\nAction: ', target: FAST ids + <eos>,
    as the data pipeline builds it); the policy, loaded through the node's policy_class hook, returns
    that chunk: the tokenizer's round trip of it, in robot units."""
    b = load_model_dir(folder)
    policy0 = FastTokenPolicy(b)
    obs = observation(1)
    chunk = smooth_chunks(1, b.config.action_horizon, 6, seed=5)[0]
    tokens = b.action_tokenizer.encode(chunk)
    pixels, image_mask, _, _, state = policy0.model_inputs(obs)
    example = policy0.prompt.build(obs.instruction, b.norm_stats.state.normalize(obs.state), action_tokens=tokens)
    batch = collate([{**example, "images": pixels[0], "image_mask": image_mask[0], "state": state[0]}])
    model = b.model.train()
    model.config = model.config.replace(use_flow=False, use_fast=True)
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if not n.startswith("transformer.expert")], 1e-2)
    torch.manual_seed(0)
    for _ in range(40):
        loss = model.compute_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01
    save_model_dir(tmp_path / "trained", model.eval(), b.layout, b.text_tokenizer, b.action_tokenizer, b.norm_stats,
                   recipe="pi0_fast")
    policy = load_policy(tmp_path / "trained", policy_class=SPEC)
    assert isinstance(policy, FastTokenPolicy) and policy.layout.action_names == LAYOUT.action_names
    out = policy.infer(obs, seed=0)
    assert policy.last_num_tokens == len(tokens)
    np.testing.assert_allclose(out.actions, b.norm_stats.actions.denormalize(
        b.action_tokenizer.decode(tokens, len(chunk), 6)), atol=1e-9)
    assert set(out.timings_ms) == {"preprocess", "decode", "postprocess", "total"}


def test_decoding_failure_and_refusals(tmp_path, folder):
    policy = FastTokenPolicy.load(folder, max_new_tokens=2)
    with torch.no_grad():
        policy.model.lm_head.weight[policy.eos_id] = 0.0  # <eos> logit 0: an action id beats it
    with pytest.raises(FastDecodeError, match="no end of sequence within 2 action tokens"):
        policy.infer(observation())
    with pytest.raises(BackendError, match="torch backend"):
        FastTokenPolicy.load(folder, backend="onnxruntime")
    b = load_model_dir(folder)
    save_model_dir(tmp_path / "pi0", b.model, b.layout, b.text_tokenizer, b.action_tokenizer, b.norm_stats,
                   recipe="pi0")
    with pytest.raises(ModelDirError, match="recipe 'pi0' trains no action tokens"):
        FastTokenPolicy.load(tmp_path / "pi0")


def test_policy_node_configures_when_warm_up_decoding_fails(tmp_path, ros_env):
    """The node's warm-up runs on black frames, where a token policy may decode no chunk: configure
    still succeeds (while running, such an observation makes the node hold: its inference-error path)."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.parameter import Parameter

    from ki_vla_ros.embodiment import load_embodiment
    from ki_vla_ros.ros.policy_node import SUCCESS, PolicyNode

    emb = load_embodiment("franka_single_arm")
    folder = init_model_dir(tmp_path / "m", Layout(emb.camera_names, emb.state_names, emb.action_names), "tiny")
    b = load_model_dir(folder)
    with torch.no_grad():
        b.model.lm_head.weight[b.text_tokenizer.eos_id] = 0.0  # never ends: every chunk fails to decode
    save_model_dir(folder, b.model, b.layout, b.text_tokenizer, b.action_tokenizer, b.norm_stats)
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = PolicyNode(context=ctx, parameter_overrides=[Parameter(k, value=v) for k, v in {
        "embodiment": emb.name, "model": str(folder), "policy_class": SPEC}.items()])
    try:
        assert node.trigger_configure() == SUCCESS, node.configure_error
        assert node.lifecycle_state() == "inactive" and node._warmup_ms > 0
        images = {c.name: np.full((*c.image_size, 3), 90, np.uint8) for c in emb.cameras}
        with pytest.raises(FastDecodeError, match="no end of sequence"):
            node.policy.infer(Observation(images=images, state=np.zeros(len(emb.state_names)), instruction="go"))
    finally:
        node.shutdown()
        node.destroy_node()
        ctx.try_shutdown()
