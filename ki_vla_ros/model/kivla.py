"""`KIVLA`: the knowledge-insulated vision-language-action model (π0.5-style, KI paper §3, §5, B, C).

Time convention (docs/pi05-conventions): t = 1 is pure noise, t = 0 is data.
x_t = t·noise + (1−t)·actions, target velocity u = noise − actions; training t ~ Beta(1.5, 1)·0.999
+ 0.001; sampling integrates N Euler steps from t = 1 with dt = −1/N (x ← x + dt·v).

Flow output (`config.flow_output`): with "velocity" (π0 / π0.5) the expert's head predicts v and
the flow loss is |v − u|². With "sample" it predicts the clean chunk â and the loss is |â − actions|²;
the flow step's velocity is (x_t − â)/t (`velocity_from_output`), the same straight path and the
same sampler. The difference is off the path: with a predicted velocity, whatever part of x_t's
noise the head fails to reproduce at gain 1/t stays in the chunk (at small t the gain is large, and
a small expert learns it poorly: on the fit-first data 10 Euler steps gave 5× the error of one,
docs/training.md); with a predicted sample the noise part (x_t/t) is exact by construction and the
last step lands on â.

Action prefix (real-time chunking, training-time variant, model/rtc.py): the first d actions of a
chunk may be given as clean data. Those tokens carry their own flow time 0 (per-token adaRMS
condition, `layers.TokenCond`), stay fixed through sampling and are left out of the flow loss.
Without a prefix every code path is the one before it existed, bit for bit.

Token streams: the backbone (vision tower → projector, text embeddings ·√width, optional
continuous-state token) processes PREFIX/TEXT/FAST tokens; the action expert processes the H
noisy actions, conditioned on t through adaRMSNorm. They meet only in the shared attention
(attention.py, where `config.insulate` applies the stop-gradient of eq. 5-6) under the mask of
masks.py.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ki_vla_ros.model.attention import attention_bias, rope_tables
from ki_vla_ros.model.batch import Batch
from ki_vla_ros.model.config import ModelConfig
from ki_vla_ros.model.layers import Modulation, TokenCond
from ki_vla_ros.model.masks import (
    ACTION,
    FAST,
    PAD,
    PREFIX,
    TEXT,
    action_attention_row,
    attention_mask,
    prefix_attention_row,
)
from ki_vla_ros.model.rtc import prefix_tokens
from ki_vla_ros.model.transformer import MixtureTransformer
from ki_vla_ros.model.vision import VisionTower

EXPERT_MODULES = (
    "transformer.expert.",
    "transformer.expert_norm.",
    "action_in_proj.",
    "action_out_proj.",
    "time_mlp_in.",
    "time_mlp_out.",
)
VISION_MODULES = ("vision.", "image_proj.")


def time_embedding(t: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """Sinusoidal φ(t): t [B] -> [B, dim], sine half then cosine half, computed in float64."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = t.to(torch.float64)[:, None] * (2 * math.pi / period)[None]
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1).to(torch.float32)


class FlowContext(NamedTuple):
    """What the flow steps over one prefix cache share (`KIVLA.expert_context`, once per chunk): the
    additive attention bias of the action rows [B, 1, 1, Lp + H] (`attention.attention_bias`; every
    action row sees the same keys: the valid prefix and all actions), the
    RoPE tables (cos, sin) [B, H, 1, hd] of the action positions, and — set per step by the flow
    loop — the expert's adaRMS modulations of that step's flow time (None: computed from t)."""

    bias: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor]
    mods: list[Modulation] | None = None


def token_positions(kinds: torch.Tensor) -> torch.Tensor:
    """RoPE positions of backbone tokens: count of valid tokens before each (first valid = 0). [B, N]."""
    return (torch.cumsum((kinds != PAD).long(), dim=-1) - 1).clamp(min=0)


class KIVLA(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        c = config
        self.vision = VisionTower(c)
        self.image_proj = nn.Linear(c.vision_width, c.width)
        self.embed_tokens = nn.Embedding(c.vocab_size, c.width)
        nn.init.normal_(self.embed_tokens.weight, std=c.width**-0.5)  # unit scale after ·√width
        self.state_proj = nn.Linear(c.state_dim, c.width) if c.state_mode == "continuous" else None
        self.transformer = MixtureTransformer(c)
        self.lm_head = nn.Linear(c.width, c.vocab_size, bias=False)  # untied (safetensors-friendly)
        self.action_in_proj = nn.Linear(c.action_dim, c.expert_width)
        self.action_out_proj = nn.Linear(c.expert_width, c.action_dim)
        self.time_mlp_in = nn.Linear(c.expert_width, c.expert_width)
        self.time_mlp_out = nn.Linear(c.expert_width, c.expert_width)

    def fuse_projections(self, on: bool = True) -> KIVLA:
        """Inference: stack every block's q/k/v and gate/up weights once (`layers.Block.fuse`), so a
        layer runs one product for q, k, v and one for gate and up. The parameters (and so state dicts,
        checkpoints and exports' inputs) keep the π0.5 layout; `train()` drops the copies, which would
        not follow parameter updates."""
        for block in (*self.transformer.backbone, *self.transformer.expert):
            block.fuse(on)
        return self

    def train(self, mode: bool = True) -> KIVLA:
        if mode:
            self.fuse_projections(False)
        return super().train(mode)

    # ---- parameter groups -------------------------------------------------------------------
    def param_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """{"vision": vision tower + projector, "backbone": text embeddings, state projection, backbone
        layers, lm_head, "expert": action expert, action projections, time MLP}."""
        groups: dict[str, list] = {"vision": [], "backbone": [], "expert": []}
        for name, p in self.named_parameters():
            g = (
                "expert"
                if name.startswith(EXPERT_MODULES)
                else "vision"
                if name.startswith(VISION_MODULES)
                else "backbone"
            )
            groups[g].append((name, p))
        return groups

    # ---- embeddings ---------------------------------------------------------------------------
    def embed_prefix(self, images, image_mask, tokens, token_kind, state):
        """images [B, V, 3, S, S], image_mask [B, V], tokens/token_kind [B, L], state [B, Ds]
        -> emb [B, V·P (+1) + L, W], kinds [B, V·P (+1) + L]. Layout: images, [state], text."""
        b, v = image_mask.shape
        c = self.config
        img = self.image_proj(self.vision(images.flatten(0, 1)))  # [B·V, P, W]
        p = img.shape[1]
        img = img.reshape(b, v * p, c.width)  # image tokens are not scaled by √width
        img_kind = torch.where(image_mask, PREFIX, PAD)[:, :, None].expand(b, v, p).reshape(b, v * p)
        txt = self.embed_tokens(tokens) * math.sqrt(c.width)  # [B, L, W]
        embs, kinds = [img], [img_kind]
        if self.state_proj is not None:
            embs.append(self.state_proj(state)[:, None])  # [B, 1, W]
            kinds.append(torch.full((b, 1), PREFIX, dtype=torch.long, device=tokens.device))
        embs.append(txt)
        kinds.append(token_kind.long())
        return torch.cat(embs, dim=1), torch.cat(kinds, dim=1)

    def time_condition(self, t: torch.Tensor) -> torch.Tensor:
        """t [B] -> the expert's adaRMS condition [B, We]: φ(t), Linear, swish, Linear, swish."""
        c = self.config
        phi = time_embedding(t, c.expert_width, c.time_min_period, c.time_max_period)
        return F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(phi.to(self.time_mlp_in.weight.dtype)))))

    def action_condition(self, t: torch.Tensor, clean: torch.Tensor | None = None):
        """t [B], clean [B, H] bool | None (action-prefix tokens: their flow time is 0) -> the time
        condition [B, We], or per token a `TokenCond`."""
        cond = self.time_condition(t)
        return cond if clean is None else TokenCond(cond, self.time_condition(torch.zeros_like(t)), clean)

    def embed_actions(self, x_t: torch.Tensor, t: torch.Tensor, clean: torch.Tensor | None = None):
        """x_t [B, H, D], t [B], clean [B, H] bool | None -> action tokens [B, H, We] (in the weights'
        dtype), `action_condition(t, clean)`."""
        return self.action_in_proj(x_t.to(self.action_in_proj.weight.dtype)), self.action_condition(t, clean)

    def _action_positions(self, kinds: torch.Tensor, horizon: int) -> torch.Tensor:
        # actions continue after the last valid prefix token: [B, H]
        n_prefix = (kinds == PREFIX).sum(-1, keepdim=True)
        return n_prefix + torch.arange(horizon, device=kinds.device)

    def _joint(self, emb_b, kinds_b, x_t, t, clean=None, rows_b=None):
        """Full forward over backbone tokens and (optionally) actions. -> (h_b, velocity | None);
        rows_b [B, R]: h_b of those backbone rows only (`MixtureTransformer.forward`).

        x_t [B, H, D] with t [B] (clean [B, H] | None); or K flow draws per example: x_t [B, K, H, D]
        with t [B, K] (clean [B, H] | None, the same prefix in every draw) -> velocity [B, K, H, D].
        The K chunks are K blocks of action tokens over one backbone pass, each seeing the prefix
        and its own block only (`attention_mask(action_block=H)`)."""
        b = kinds_b.shape[0]
        pos_b = token_positions(kinds_b)
        if x_t is None:
            h_b, _ = self.transformer(
                emb_b, pos_b, None, None, None, attention_mask(kinds_b), self.config.insulate, rows_b
            )
            return h_b, None
        draws = x_t.shape[1] if x_t.dim() == 4 else 0
        h = x_t.shape[-2]
        if draws:  # per-token condition [B, K·H, We]: each block its own t, the prefix at t = 0
            x_a = self.action_in_proj(x_t.flatten(1, 2).to(self.action_in_proj.weight.dtype))
            cond = self.time_condition(t.flatten())[:, None].expand(-1, h, -1).reshape(b, draws * h, -1)
            if clean is not None:
                use0 = clean.repeat(1, draws)[..., None]
                cond = torch.where(use0, self.time_condition(t.new_zeros(1))[:, None], cond)
        else:
            x_a, cond = self.embed_actions(x_t, t, clean)
        n_a = max(draws, 1) * h
        kinds = torch.cat([kinds_b, torch.full((b, n_a), ACTION, dtype=torch.long, device=kinds_b.device)], 1)
        h_b, h_a = self.transformer(
            emb_b,
            pos_b,
            x_a,
            self._action_positions(kinds_b, h).repeat(1, max(draws, 1)),
            cond,
            attention_mask(kinds, action_block=h if draws else 0),
            self.config.insulate,
            rows_b,
        )
        v = self.action_out_proj(h_a)  # the head's output: velocity or clean sample (`config.flow_output`)
        return h_b, (v.unflatten(1, (draws, h)) if draws else v)

    def velocity_from_output(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The expert head's output [B, H, D] at x_t [B, H, D], t [B] -> the flow's velocity: the output
        itself ("velocity"), or (x_t − â)/t for a predicted clean chunk â ("sample"; t ≥ 1e-3)."""
        if self.config.flow_output == "velocity":
            return out
        return (x_t - out) / t.clamp(min=1e-3).to(x_t.dtype)[:, None, None]

    # ---- training -----------------------------------------------------------------------------
    def sample_time(self, b: int, device) -> torch.Tensor:
        beta = torch.distributions.Beta(torch.tensor(1.5, device=device), torch.tensor(1.0, device=device))
        return beta.sample((b,)) * 0.999 + 0.001

    def compute_loss(self, batch: Batch, flow_samples: int = 1) -> dict[str, torch.Tensor]:
        """Eq. 4. ``flow_samples`` > 1: that many (noise, t) draws per example share one backbone
        pass (the actions enter as that many blocks of H tokens, `_joint`); the flow loss is their
        mean. The backbone's cost is paid once, the expert's K times. Returns scalar tensors:

        * ``text_loss`` — mean cross-entropy over TEXT target tokens with loss_mask (0 if none);
        * ``fast_loss`` — mean cross-entropy over FAST target tokens with loss_mask (0 if none);
        * ``flow_loss`` — flow-matching MSE of the velocity (of the clean chunk with
          `config.flow_output` "sample"), per example averaged over H × the
          real action dims (action_dim_mask), then over examples with action_mask (0 if none or
          if `config.use_flow` is off). With ``batch["prefix_len"]`` (model/rtc.py) the first
          prefix_len[b] actions of example b enter as clean data at flow time 0 and the average
          runs over the other H − prefix_len[b] actions only;
        * ``loss`` = token CE (mean over all counted target tokens: TEXT, plus FAST if
          `config.use_fast`) + alpha · flow_loss (if `config.use_flow`).
        """
        c = self.config
        tokens, kind, loss_mask = batch["tokens"], batch["token_kind"].long(), batch["loss_mask"].bool()
        emb_b, kinds_b = self.embed_prefix(batch["images"], batch["image_mask"], tokens, kind, batch["state"])
        zero = emb_b.new_zeros(())
        x_t = t = u = clean = None
        if c.use_flow:
            if flow_samples < 1:
                raise ValueError(f"flow_samples: must be >= 1, got {flow_samples}")
            actions = batch["actions"]  # [B, H, D]
            b, k = actions.shape[0], flow_samples
            if k > 1:
                actions = actions[:, None].expand(-1, k, -1, -1)  # [B, K, H, D]
            noise = batch.get("noise")
            noise = torch.randn_like(actions) if noise is None else noise
            t = batch.get("time")
            t = self.sample_time(b * k, actions.device).view(actions.shape[:-2]) if t is None else t  # [B] | [B, K]
            if noise.shape != actions.shape or t.shape != actions.shape[:-2]:
                raise ValueError(f"noise {tuple(noise.shape)} / time {tuple(t.shape)}: expected "
                                 f"{tuple(actions.shape)} / {tuple(actions.shape[:-2])} for flow_samples={k}")
            x_t = t[..., None, None] * noise + (1 - t[..., None, None]) * actions
            u = noise - actions if c.flow_output == "velocity" else actions  # what the head predicts
            if batch.get("prefix_len") is not None:
                clean = prefix_tokens(batch["prefix_len"], actions.shape[-2])  # [B, H]
                clean_x = clean[:, None, :, None] if k > 1 else clean[..., None]
                x_t = torch.where(clean_x, actions, x_t)
        # token cross-entropy: the logit at j-1 predicts token j; the backbone's last layer runs for
        # those rows only (each example's in order, then padding rows up to the batch's most)
        tgt_kind = kind[:, 1:]
        sel = loss_mask[:, 1:] & ((tgt_kind == TEXT) | (tgt_kind == FAST))  # [B, L-1]
        counts = sel.sum(1)
        wanted = torch.argsort((~sel).to(torch.int8), dim=1, stable=True)[:, : max(int(counts.max()), 1)]
        rows_b = wanted + (emb_b.shape[1] - tokens.shape[1])  # [B, R]: rows of the joint backbone sequence
        h_b, v_t = self._joint(emb_b, kinds_b, x_t, t, clean, rows_b)
        real = torch.arange(wanted.shape[1], device=sel.device) < counts[:, None]  # [B, R]: not padding
        logits = self.lm_head(h_b[real]).float()  # [M, vocab], in the order of [sel]
        ce = F.cross_entropy(logits, tokens[:, 1:][sel], reduction="none")  # [M]
        is_fast = (tgt_kind[sel] == FAST).float()
        is_text = 1.0 - is_fast
        n_text, n_fast = is_text.sum(), is_fast.sum()
        text_loss = (ce * is_text).sum() / n_text.clamp(min=1)
        fast_loss = (ce * is_fast).sum() / n_fast.clamp(min=1)
        if c.use_fast:
            ar_loss = ce.sum() / (n_text + n_fast).clamp(min=1)
        else:
            ar_loss = (ce * is_text).sum() / n_text.clamp(min=1)

        flow_loss = zero
        if v_t is not None:
            if v_t.dim() == 4:  # K draws: the K blocks' errors averaged per example, as one chunk's
                v_t, u = v_t.flatten(0, 1), u.flatten(0, 1)  # [B·K, H, D]
                clean = None if clean is None else clean.repeat_interleave(flow_samples, 0)
            dim_mask = batch["action_dim_mask"].to(v_t.dtype).repeat_interleave(flow_samples, 0)  # [B·K, D]
            err = (v_t - u).pow(2) * dim_mask[:, None, :]
            n_tokens = v_t.shape[1]
            if clean is not None:  # the prefix is given, not predicted
                err = err * (~clean)[..., None].to(err.dtype)
                n_tokens = (~clean).sum(-1).to(err.dtype)
            per_ex = err.sum((1, 2)) / (n_tokens * dim_mask.sum(-1)).clamp(min=1)  # [B·K]
            per_ex = per_ex.view(-1, flow_samples).mean(1)  # [B]
            act = batch["action_mask"].to(v_t.dtype)
            flow_loss = (per_ex * act).sum() / act.sum().clamp(min=1)
        loss = ar_loss + c.alpha * flow_loss if c.use_flow else ar_loss
        return {"loss": loss, "text_loss": text_loss, "fast_loss": fast_loss, "flow_loss": flow_loss}

    # ---- inference (cache-friendly, export-friendly: fixed shapes, no data-dependent control flow) --
    def prefix_cache(self, images, image_mask, tokens, token_mask, state):
        """images [B, V, 3, S, S], image_mask [B, V] bool, tokens [B, Lt] long, token_mask [B, Lt] bool
        (prefix tokens only, right-padded), state [B, Ds] (read in "continuous" mode only)
        -> k, v [depth, B, Lp, kv_heads, head_dim], prefix_mask [B, Lp] bool (Lp = V·P (+1) + Lt)."""
        kind = torch.where(token_mask, PREFIX, PAD)
        emb, kinds = self.embed_prefix(images, image_mask, tokens, kind, state)
        k, v = self.transformer.prefix_kv(emb, token_positions(kinds), prefix_attention_row(kinds))
        return k, v, kinds == PREFIX

    def expert_context(self, prefix_mask: torch.Tensor, horizon: int,
                       dtype: torch.dtype = torch.float32) -> FlowContext:
        """What every flow step over one cache shares (`FlowContext`, attention bias in `dtype`, the
        cache's). Computed once per chunk."""
        prefix_kind = torch.where(prefix_mask, PREFIX, PAD)
        allowed = action_attention_row(prefix_kind, horizon)  # [B, 1, Lp + H]: every action row alike
        rope_a = rope_tables(self._action_positions(prefix_kind, horizon), self.config.head_dim, self.config.rope_base)
        return FlowContext(attention_bias(allowed, 1, dtype), rope_a)  # one bias row for every query

    def step_modulations(self, num_steps: int, clean: torch.Tensor | None,
                         like: torch.Tensor) -> list[list[Modulation]]:
        """The expert's adaRMS modulations of every Euler step (flow time 1 − i/num_steps), from one
        time-MLP and one modulation product per norm for all steps together: [step][norm] ->
        `Modulation` of [1, 1, We] each, or [B, H, We] with `clean` [B, H] (action-prefix tokens take
        the modulation of flow time 0). `like`: a tensor with the flow's dtype and device (t is
        rounded to it, as the steps' t)."""
        t = torch.tensor([1.0 - i / num_steps for i in range(num_steps)], dtype=like.dtype, device=like.device)

        def table(cond):  # [S', norms, 3, 1, 1, We] for the conditions of S' flow times
            return torch.stack([torch.stack(m, 1) for m in self.transformer.expert_modulations(cond)], 1)[:, :, :, None]

        parts = table(self.time_condition(t)).flatten(0, 2).unbind(0)  # S · norms · 3 of [1, 1, We]
        norms = len(parts) // (3 * num_steps)
        if clean is not None:  # selected per step, norm and part: each Where sits beside its one use,
            # where the compiler fuses it (one [S, norms, 3, B, H, We] table would be written per chunk)
            at_zero = table(self.time_condition(torch.zeros_like(t[:1]))).flatten(0, 2).unbind(0)
            parts = [torch.where(clean[..., None], at_zero[j % (3 * norms)], p) for j, p in enumerate(parts)]
        return [[Modulation(*parts[3 * (s * norms + i): 3 * (s * norms + i) + 3]) for i in range(norms)]
                for s in range(num_steps)]

    def expert_velocity(self, k, v, prefix_mask, x_t, t, context: FlowContext | None = None, clean=None):
        """k, v [depth, B, Lp, K, hd], prefix_mask [B, Lp] bool, x_t [B, H, D], t [B] -> velocity [B, H, D]
        (x_t's dtype; the expert runs in the weights'). `context` = `expert_context(prefix_mask, H)`,
        passed in by the flow loop so it is built once (with the step's modulations of t and clean);
        `clean` [B, H] bool marks action-prefix tokens (flow time 0)."""
        if context is None:
            context = self.expert_context(prefix_mask, x_t.shape[1], k.dtype)
        cond = context.mods if context.mods is not None else self.action_condition(t, clean)
        x_a = self.action_in_proj(x_t.to(self.action_in_proj.weight.dtype))
        h_a = self.transformer.expert_over_cache(k, v, x_a, context.rope, cond, context.bias, self.config.insulate)
        return self.velocity_from_output(self.action_out_proj(h_a).to(x_t.dtype), x_t, t)

    @torch.no_grad()
    def sample_actions(self, images, image_mask, tokens, token_mask, state, noise, num_steps: int = 10,
                       action_prefix=None, action_prefix_len=None):
        """Prefix once, then `num_steps` Euler steps from t = 1 (noise) to t = 0.
        noise [B, H, D] -> actions [B, H, D]; action prefix: see `flow_from_cache`."""
        k, v, prefix_mask = self.prefix_cache(images, image_mask, tokens, token_mask, state)
        return self.flow_from_cache(k, v, prefix_mask, noise, num_steps, action_prefix, action_prefix_len)

    def flow_from_cache(self, k, v, prefix_mask, noise, num_steps: int = 10, action_prefix=None,
                        action_prefix_len=None):
        """The flow step: `num_steps` Euler steps over the prefix cache, t = 1 (noise) -> 0 (data).
        noise [B, H, D] -> actions [B, H, D] (normalised). Export traces this loop unrolled.

        Action prefix (model/rtc.py): action_prefix [B, H, D] (normalised; rows from
        action_prefix_len on are ignored) and action_prefix_len [B] int64 in [0, H]. The first
        action_prefix_len[b] actions are held at the prefix, at flow time 0, through every step
        and come back unchanged; length 0 gives exactly the chunk without a prefix."""
        context = self.expert_context(prefix_mask, noise.shape[1], k.dtype)
        clean = None if action_prefix is None else prefix_tokens(action_prefix_len, noise.shape[1])  # [B, H]
        mods = self.step_modulations(num_steps, clean, noise)
        x, dt = noise, -1.0 / num_steps
        if clean is not None:
            action_prefix = action_prefix.to(noise.dtype)
            x = torch.where(clean[..., None], action_prefix, x)
        for i in range(num_steps):
            t = torch.full((noise.shape[0],), 1.0 - i / num_steps, dtype=noise.dtype, device=noise.device)
            step = context._replace(mods=mods[i])
            if clean is None:
                x = x + dt * self.expert_velocity(k, v, prefix_mask, x, t, step)
            else:
                vel = self.expert_velocity(k, v, prefix_mask, x, t, step, clean)
                x = torch.where(clean[..., None], action_prefix, x + dt * vel)
        return x

    @torch.no_grad()
    def sample_actions_uncached(
        self, images, image_mask, tokens, token_mask, state, noise, num_steps: int = 10, action_prefix=None,
        action_prefix_len=None,
    ):
        """Reference sampler: re-runs the whole model (vision, backbone and expert) at every step."""
        kind = torch.where(token_mask, PREFIX, PAD)
        clean = None if action_prefix is None else prefix_tokens(action_prefix_len, noise.shape[1])
        x, dt = noise, -1.0 / num_steps
        if clean is not None:
            x = torch.where(clean[..., None], action_prefix, x)
        for i in range(num_steps):
            emb, kinds = self.embed_prefix(images, image_mask, tokens, kind, state)
            t = torch.full((noise.shape[0],), 1.0 - i / num_steps, device=noise.device)
            x = x + dt * self.velocity_from_output(self._joint(emb, kinds, x, t, clean)[1], x, t)
            if clean is not None:
                x = torch.where(clean[..., None], action_prefix, x)
        return x

    @torch.no_grad()
    def outputs(self, images, image_mask, tokens, token_kind, state, actions_t=None, t=None):
        """Backbone logits for every text token [B, L, vocab] (and the expert head's output — velocity
        or clean sample, `config.flow_output` — if actions_t given)."""
        emb, kinds = self.embed_prefix(images, image_mask, tokens, token_kind, state)
        h_b, v = self._joint(emb, kinds, actions_t, t)
        return self.lm_head(h_b[:, -tokens.shape[1] :]), v
