"""Real-time chunking, training-time variant (Black et al. 2025, "Training-Time Action Conditioning
for Efficient Real-Time Chunking"): the action expert learns to continue a given action prefix.

While a chunk executes, the next one is computed; by the time it is ready the robot has executed
(or is committed to) the first d actions of it — d = the inference delay in control steps. In
training, with probability `probability` an example gets a delay d ~ U{1, …, max_delay_steps}:
its first d actions enter the expert as clean data with their own flow time 0 (t = 0 is data in
this project's π0.5 convention), and the flow loss counts only the other H − d actions. At run
time the sampler keeps the given prefix fixed at t = 0 through every Euler step (kivla.py:
`flow_from_cache(..., action_prefix=, action_prefix_len=)`), so the chunk continues the actions
the robot is already executing. No guidance, no autograd at run time: a model trained without it
gets no benefit from a prefix (the runtime ignores prefixes for such models).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RtcConfig:
    """`rtc:` of a training config, and of model.yaml (what the weights were trained with).
    Both 0 (the default): off — no prefix conditioning, every example as before."""

    max_delay_steps: int = 0  # largest simulated inference delay, in control steps (< action_horizon)
    probability: float = 0.0  # share of action examples trained with a prefix

    @property
    def enabled(self) -> bool:
        return self.max_delay_steps > 0 and self.probability > 0

    def validate(self) -> None:
        if self.max_delay_steps < 0:
            raise ValueError(f"max_delay_steps: must be >= 0, got {self.max_delay_steps}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability: expected 0 <= p <= 1, got {self.probability}")
        if (self.max_delay_steps > 0) != (self.probability > 0):
            raise ValueError(f"give both max_delay_steps and probability > 0 to train with action prefixes, or "
                             f"neither (got max_delay_steps {self.max_delay_steps}, probability {self.probability})")

    def check_horizon(self, action_horizon: int) -> None:
        if self.max_delay_steps >= action_horizon:
            raise ValueError(f"rtc.max_delay_steps: {self.max_delay_steps} must be below the action horizon "
                             f"{action_horizon} (some actions must be left to predict)")


def sample_prefix_len(rtc: RtcConfig, batch_size: int) -> torch.Tensor:
    """Per-example action-prefix lengths [B] int64: 0 with probability 1 − p, else U{1, …, max}.
    Draws from torch's global generator (seeded and checkpointed by the trainer)."""
    if not rtc.enabled:
        return torch.zeros(batch_size, dtype=torch.long)
    delay = torch.randint(1, rtc.max_delay_steps + 1, (batch_size,))
    use = torch.rand(batch_size) < rtc.probability
    return torch.where(use, delay, torch.zeros_like(delay))


def prefix_tokens(prefix_len: torch.Tensor, horizon: int) -> torch.Tensor:
    """prefix_len [B] -> bool [B, H]: True on the action tokens given as clean data."""
    return torch.arange(horizon, device=prefix_len.device)[None] < prefix_len[:, None]
