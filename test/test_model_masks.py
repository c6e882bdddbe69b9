"""The appendix-B attention mask: against a hand-written reference, and through model outputs."""

import torch

from ki_vla_ros.model import ACTION, FAST, KIVLA, PAD, PREFIX, TEXT, ModelConfig, attention_mask
from ki_vla_ros.model.synthetic import open_gates, synthetic_batch


def test_mask_matches_hand_written_reference():
    kinds = torch.tensor([[PREFIX, PAD, PREFIX, TEXT, FAST, FAST, PAD, ACTION, ACTION]])
    P, T, F, A, _ = 1, 1, 1, 1, 0  # noqa: N806 (readability of the table)
    # rows: query; columns: key — order as in `kinds`
    ref = torch.tensor([
        # P  pad P  T  F  F  pad A  A
        [P, 0, P, 0, 0, 0, 0, 0, 0],  # prefix: bidirectional over prefix only
        [0, 1, 0, 0, 0, 0, 0, 0, 0],  # pad sees only itself
        [P, 0, P, 0, 0, 0, 0, 0, 0],
        [P, 0, P, T, 0, 0, 0, 0, 0],  # text target: prefix + itself (causal)
        [P, 0, P, T, F, 0, 0, 0, 0],  # FAST: prefix + earlier targets
        [P, 0, P, T, F, F, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 0, 0],
        [P, 0, P, 0, 0, 0, 0, A, A],  # actions: prefix + all actions, never targets
        [P, 0, P, 0, 0, 0, 0, A, A],
    ], dtype=torch.bool)
    assert torch.equal(attention_mask(kinds)[0], ref)


def _setup(state_mode="text"):
    torch.manual_seed(1)
    cfg = ModelConfig.preset("tiny", state_mode=state_mode)
    model = KIVLA(cfg).eval()
    open_gates(model)
    batch = synthetic_batch(cfg, batch_size=4, mix="both")
    return model, batch


def _run(model, batch, tokens=None, x_t=None, images=None):
    return model.outputs(batch["images"] if images is None else images, batch["image_mask"],
                         batch["tokens"] if tokens is None else tokens, batch["token_kind"], batch["state"],
                         batch["noise"] if x_t is None else x_t, batch["time"])


def test_changing_actions_changes_no_backbone_logit():
    model, batch = _setup()
    logits, v = _run(model, batch)
    logits2, v2 = _run(model, batch, x_t=batch["noise"] + torch.randn_like(batch["noise"]))
    assert torch.equal(logits, logits2)
    assert not torch.allclose(v, v2)  # the expert does see its own input (the test can fail)


def test_changing_fast_and_text_targets_changes_no_action_output():
    model, batch = _setup()
    kind = batch["token_kind"]
    logits, v = _run(model, batch)
    tokens = batch["tokens"].clone()
    target = (kind == FAST) | (kind == TEXT)
    tokens[target] = torch.randint(3, 200, (int(target.sum()),))
    logits2, v2 = _run(model, batch, tokens=tokens)
    torch.testing.assert_close(v, v2, rtol=0, atol=1e-6)
    # control: the targets did change later logits, and a prefix change reaches the expert
    assert not torch.allclose(logits, logits2)
    tokens3 = batch["tokens"].clone()
    tokens3[:, 2] = (tokens3[:, 2] + 7) % 200 + 3
    assert not torch.allclose(v, _run(model, batch, tokens=tokens3)[1])


def test_targets_are_causal_and_prefix_is_bidirectional():
    model, batch = _setup()
    logits, _ = _run(model, batch)
    first_fast = int((batch["token_kind"][0] == FAST).nonzero()[0])
    tokens = batch["tokens"].clone()
    tokens[0, first_fast + 2] = (tokens[0, first_fast + 2] + 1 - 3) % 100 + 3
    logits2, _ = _run(model, batch, tokens=tokens)
    torch.testing.assert_close(logits[0, : first_fast + 2], logits2[0, : first_fast + 2], rtol=0, atol=1e-6)
    assert not torch.allclose(logits[0, first_fast + 2:], logits2[0, first_fast + 2:])
    # the last prefix token changes the first prefix token's output (bidirectional prefix)
    n_prefix = int((batch["token_kind"][0] == PREFIX).sum())
    tokens = batch["tokens"].clone()
    tokens[0, n_prefix - 1] = (tokens[0, n_prefix - 1] + 1 - 3) % 100 + 3
    assert not torch.allclose(logits[0, 0], _run(model, batch, tokens=tokens)[0][0, 0])


def test_missing_view_and_padding_are_invisible():
    model, batch = _setup()
    logits, v = _run(model, batch)
    images = batch["images"].clone()
    missing = ~batch["image_mask"]
    assert missing.any()
    images[missing] = torch.rand_like(images[missing])  # content of a masked view must not matter
    tokens = batch["tokens"].clone()
    tokens[batch["token_kind"] == PAD] = 5  # nor the id of a padding token
    logits2, v2 = _run(model, batch, tokens=tokens, images=images)
    valid = batch["token_kind"] != PAD
    torch.testing.assert_close(logits[valid], logits2[valid], rtol=0, atol=1e-6)
    torch.testing.assert_close(v, v2, rtol=0, atol=1e-6)


def test_prefix_pass_with_one_mask_row_matches_the_full_mask():
    """The cached prefix runs with one mask row for every query (`prefix_attention_row`): on the PREFIX
    rows it is `attention_mask`, and K/V at the valid positions and the sampled actions are those of
    the full mask; a PAD token's K/V differ (it now sees the prefix) but reach nothing."""
    from ki_vla_ros.model.kivla import token_positions
    from ki_vla_ros.model.masks import prefix_attention_row

    model, batch = _setup()
    kind = torch.where(batch["token_kind"] == PREFIX, PREFIX, PAD)
    tokens = torch.where(kind == PREFIX, batch["tokens"], 0)
    with torch.no_grad():
        emb, kinds = model.embed_prefix(batch["images"], batch["image_mask"], tokens, kind, batch["state"])
        assert (kinds == PAD).any(axis=1).all()  # every example has padding (a missing view or text padding)
        full = attention_mask(kinds)
        row = prefix_attention_row(kinds)
        prefix_rows = kinds == PREFIX
        assert torch.equal(row.expand_as(full)[prefix_rows], full[prefix_rows])
        pos = token_positions(kinds)
        k_full, v_full = model.transformer.prefix_kv(emb, pos, full)
        k_row, v_row = model.transformer.prefix_kv(emb, pos, row)
        torch.testing.assert_close(k_row[:, prefix_rows], k_full[:, prefix_rows], rtol=0, atol=1e-6)
        torch.testing.assert_close(v_row[:, prefix_rows], v_full[:, prefix_rows], rtol=0, atol=1e-6)
        assert not torch.allclose(v_row[:, ~prefix_rows], v_full[:, ~prefix_rows])  # PAD rows did change
        a_row = model.flow_from_cache(k_row, v_row, prefix_rows, batch["noise"], 3)
        a_full = model.flow_from_cache(k_full, v_full, prefix_rows, batch["noise"], 3)
    torch.testing.assert_close(a_row, a_full, rtol=0, atol=1e-5)


def test_action_row_is_every_action_query_row_of_the_full_mask():
    """The flow loop reads one mask row for its action queries (`action_attention_row`): it must be
    exactly the row `attention_mask` gives every ACTION query after a prefix with padding in it."""
    from ki_vla_ros.model.masks import action_attention_row

    prefix = torch.tensor([[PREFIX, PREFIX, PAD, PREFIX, PAD], [PAD, PREFIX, PREFIX, PREFIX, PREFIX]])
    horizon = 4
    kinds = torch.cat([prefix, torch.full((2, horizon), ACTION)], 1)
    full = attention_mask(kinds)[:, prefix.shape[1]:]  # the action queries' rows [B, H, Lp + H]
    row = action_attention_row(prefix, horizon)
    assert row.shape == (2, 1, prefix.shape[1] + horizon)
    assert torch.equal(row.expand_as(full), full)
    assert not row[0, 0, 2] and row[0, 0, 3] and row[1, 0, -1]  # PAD key hidden, PREFIX and ACTION keys seen
