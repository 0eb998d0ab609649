"""What decides the numbers of the model-collapse experiment (`flows/collapse.py`, `curate collapse-sim`).

Imports neither Prefect nor torch, so that `curate collapse-sim`'s options take their defaults from
`CollapseSpec` at start-up (flows/cli_common.py says why the CLI waits for both).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from flows.cli_common import DEMO_BATCH_SIZE, DEMO_VOCAB_SIZE
from training.config import AblationSpec, TrainConfig

POLICIES = ("replace", "accumulate")


class CollapseError(ValueError):
    """A collapse experiment that cannot run as asked; the message says why."""


@dataclass(frozen=True)
class CollapseSpec:
    """Everything that decides the experiment's numbers (the defaults are `curate collapse-sim`'s)."""

    generations: int = 3
    # Three seeds (our choice, as the ablations' default): with two, the paired t interval has one degree of
    # freedom (t = 12.7); in one of our three 2-seed trials it contained zero although both seeds had replace
    # worse than accumulate by 0.67 and 0.86 nats.
    seeds: int = len(AblationSpec.seeds)
    # Training budget of every run (our choice): ~1.1 epochs of the default human version; ~15 s per run on
    # one core of a 2-core machine with two runs at a time (the default command: ~6 min).
    tokens: int = 102_400
    samples: int | None = None  # streams per generation; None: human tokens / (generations + 1) / sample_tokens
    sample_tokens: int = 64  # Shumailov et al. sample 64-token sequences
    temperature: float = 1.0  # both papers sample at temperature 1
    preset: str = TrainConfig.preset
    block_size: int = 64  # our choice: the length of a sampled stream (as Shumailov et al.'s 64-token blocks)
    batch_size: int = DEMO_BATCH_SIZE  # the demo's (flows/cli_common.py)
    learning_rate: float = TrainConfig.learning_rate
    vocab_size: int = DEMO_VOCAB_SIZE  # the demo's (flows/cli_common.py)
    eval_tokens: int = TrainConfig.eval_tokens  # the demo's held-out set is smaller, so all of it
    # The demo corpus when no human version is given (our choice): scale 0.4 holds out 24 human documents
    # (~22 k tokens), enough for the perplexity guard's 10-document reference half; a seeded 25 % of its
    # human documents (~90 k tokens) keeps the sampling, which grows with the human tokens, inside minutes.
    scale: float = 0.4
    human_share: float = 0.25
    device: str = TrainConfig.device

    def training(self) -> AblationSpec:
        """The ablation spec every run of the experiment shares (only the version and the seed change)."""
        return AblationSpec(preset=self.preset, tokens=self.tokens, seeds=tuple(range(self.seeds)),
                            batch_size=self.batch_size, learning_rate=self.learning_rate,
                            block_size=self.block_size, eval_tokens=self.eval_tokens, device=self.device)

    def runs(self) -> int:
        """Training runs: per seed, generation 0 and every later generation under each policy."""
        return self.seeds * (1 + len(POLICIES) * self.generations)

    def check(self) -> None:
        if self.generations < 1:
            raise CollapseError(f"generations must be at least 1, got {self.generations}")
        if self.seeds < 1:
            raise CollapseError(f"seeds must be at least 1, got {self.seeds}")
        if self.sample_tokens < 1 or (self.samples is not None and self.samples < 1):
            raise CollapseError("samples and sample_tokens must be at least 1")
        if self.tokens < self.batch_size * self.block_size:
            raise CollapseError(f"tokens ({self.tokens}) is less than one batch ({self.batch_size} x "
                                f"{self.block_size})")
        if not 0 < self.human_share <= 1:
            raise CollapseError(f"human_share must lie in (0, 1], got {self.human_share}")
        if self.temperature <= 0:
            raise CollapseError(f"temperature must be > 0 (sampling, not greedy decoding), got {self.temperature}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_name(spec: CollapseSpec, human: str | None = None) -> str:
    """Readable, and different whenever the sampled versions would differ (seeds only add chains)."""
    samples = f"n{spec.samples}x{spec.sample_tokens}" if spec.samples else f"auto{spec.sample_tokens}"
    data = human or f"demo{spec.scale:g}x{spec.human_share:g}"
    return f"collapse-{data}-{spec.preset}-t{spec.tokens}-b{spec.block_size}-g{spec.generations}-{samples}"
