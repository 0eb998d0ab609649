"""A compact GPT-2-style decoder for data ablations: one file, plain PyTorch; its config dataclass
(`GPTConfig`, and the presets) lives in the torch-free `training.config`.

Shape of the network::

    tokens -> token embedding (+ learned position embedding, unless ``rope``) -> dropout
           -> n_layer x [x + attn(LN(x)); x + mlp(LN(x))]      (pre-LayerNorm residual blocks)
           -> final LayerNorm -> LM head (shares its weight matrix with the token embedding)

Attention goes through ``torch.nn.functional.scaled_dot_product_attention(..., is_causal=True)``, so the
fastest kernel available for the tensors' device is used. With ``rope=True`` there is no position table;
rotary embeddings rotate the queries and keys of every attention layer instead.

Parameter counts (all distinct tensors, the tied embedding/LM-head matrix counted once, biases and
LayerNorms included):

    tiny   987,360   (4 layers, 4 heads, n_embd 80,  vocab 8192,  block 256)
    small  10,101,760 (6 layers, 5 heads, n_embd 320, vocab 8192,  block 256)
    gpt2   124,475,904 (12 layers, 12 heads, n_embd 768, vocab 50304, block 1024)

With ``rope=True`` subtract the position table (block_size * n_embd); with ``bias=False`` the biases and
LayerNorm shifts go too.

The module holds no device logic: move it with ``.to(device)`` and feed it tensors on that device.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from training.config import ADAM_BETA1, PRESETS, GPTConfig, TrainConfig

__all__ = ["GPT", "GPTConfig", "IGNORE_INDEX", "PRESETS"]

# The target of a position that has no next token (padding): excluded from every loss and every count of
# evaluated tokens. -100 is torch.nn.functional.cross_entropy's default ignore_index.
IGNORE_INDEX = -100


# --------------------------------------------------------------------------------------------------------
# Rotary position embeddings


def rope_tables(seq_len: int, head_size: int, device: torch.device | None = None,
                base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles, each (seq_len, head_size // 2), in float32.

    Channel pair i of position t turns by t * base ** (-2i / head_size). Built per forward pass (a few
    thousand numbers) so that they are always on the input's device and never cast to a low precision.
    """
    inv_freq = base ** (-torch.arange(0, head_size, 2, device=device, dtype=torch.float32) / head_size)
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, n_head, T, head_size) queries or keys; channel i pairs with channel i + head_size / 2."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    rotated = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.to(x.dtype)


# --------------------------------------------------------------------------------------------------------
# Building blocks


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # residual projection
        self.proj.is_residual_projection = True
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        # (B, T, 3C) -> three tensors of (B, n_head, T, head_size)
        # split (not unbind): its backward is a single concatenation
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.qkv(x).split(C, dim=2))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)  # residual projection
        self.proj.is_residual_projection = True
        self.dropout = nn.Dropout(config.dropout)
        self.gelu_approximate = config.gelu_approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate=self.gelu_approximate)))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: each sub-layer reads a normalised copy and adds to the stream."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_mlp = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), rope)
        return x + self.mlp(self.ln_mlp(x))


# --------------------------------------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = None if config.rope else nn.Embedding(config.block_size, config.n_embd)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_final = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied: one tensor serves as input and output embedding
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 initialisation: N(0, 0.02) everywhere, residual projections shrunk by 1/sqrt(2 n_layer)."""
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "is_residual_projection", False):
                std /= math.sqrt(2 * self.config.n_layer)  # two residual additions per block
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        # LayerNorms keep PyTorch's ones/zeros.

    # ---- forward passes ----------------------------------------------------------------------------------

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Final-LayerNorm outputs (B, T, n_embd) for token ids ``idx`` (B, T)."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        x = self.tok_emb(idx)
        rope = None
        if self.pos_emb is None:
            rope = rope_tables(T, self.config.head_size, device=idx.device)
        else:
            x = x + self.pos_emb(torch.arange(T, device=idx.device))
        x = self.emb_dropout(x)
        for block in self.blocks:
            x = block(x, rope)
        return self.ln_final(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits and loss for token ids ``idx`` (B, T), T <= block_size.

        With ``targets`` (B, T): logits for every position (B, T, vocab) and the cross entropy, with target
        ``IGNORE_INDEX`` meaning "ignore this position". ``reduction="mean"`` averages over the counted
        positions, ``"sum"`` adds them up, ``"none"`` gives a (B, T) tensor with 0 at ignored positions.
        Without ``targets``: logits for the last position only (B, 1, vocab) and loss None.
        """
        x = self.hidden_states(idx)
        if targets is None:
            return self.lm_head(x[:, -1:, :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction=reduction)
        if reduction == "none":
            loss = loss.view(targets.shape)
        return logits, loss

    def token_losses(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-token cross entropy in nats, (B, T); positions whose target is ``IGNORE_INDEX`` get 0.

        The mean over positions with a target equals ``forward(idx, targets)[1]``; summing over tokens of
        one source gives per-source loss, and dividing summed nats by ln 2 * bytes gives bits per byte.
        """
        return self(idx, targets, reduction="none")[1]

    # ---- accounting -------------------------------------------------------------------------------------

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters; the tied embedding/LM-head matrix is counted once.

        ``non_embedding=True`` leaves out the token embedding (vocab_size x n_embd) and the position table
        (Kaplan et al. 2020's N), although the tied matrix does real work as the LM head.
        """
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a shared tensor once
        if non_embedding:
            total -= self.tok_emb.weight.numel()
            if self.pos_emb is not None:
                total -= self.pos_emb.weight.numel()
        return total

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token, PaLM (Chowdhery et al. 2022) appendix B style.

            6 * N + 12 * n_layer * T * n_embd

        N = num_params(non_embedding=True) + vocab_size * n_embd: every matrix that is multiplied,
        including the tied LM head, but not the position table, which is only looked up. The second term
        is the attention scores and weighted sum (QK^T and AV) at context length T (default block_size),
        counted over the full T x T square as PaLM does, though causal kernels skip about half of it.
        """
        c = self.config
        t = c.block_size if seq_len is None else seq_len
        n_matmul = self.num_params(non_embedding=True) + c.vocab_size * c.n_embd
        return 6 * n_matmul + 12 * c.n_layer * t * c.n_embd

    def estimate_mfu(self, tokens_per_second: float, peak_flops: float, seq_len: int | None = None) -> float:
        """Model FLOPs utilisation: achieved training FLOP/s (from :meth:`flops_per_token`) / ``peak_flops``.

        ``peak_flops`` is the hardware's dense peak for the dtype in use, e.g. 989e12 for an H100 SXM in
        bf16, or 312e12 for an A100.
        """
        return self.flops_per_token(seq_len) * tokens_per_second / peak_flops

    # ---- training -----------------------------------------------------------------------------------------

    def configure_optimizer(self, weight_decay: float, learning_rate: float,
                            betas: tuple[float, float] = (ADAM_BETA1, TrainConfig.beta2),
                            device_type: str = "cpu") -> torch.optim.AdamW:
        """AdamW that decays matrices and embeddings (dim >= 2) but not biases or LayerNorm parameters."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        extra = {}
        if device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters:
            extra["fused"] = True
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)

    # ---- sampling ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, eot_id: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Append up to ``max_new_tokens`` tokens to each row of ``idx`` (B, T) and return the result.

        The context is cropped to the last block_size tokens. ``temperature=0`` picks the most likely
        token (greedy); otherwise logits are divided by the temperature, optionally restricted to the
        ``top_k`` most likely tokens and then to the smallest set whose probability adds up to at least
        ``top_p``, and sampled with ``generator`` (on the tensors' device) when given. With ``eot_id``, a
        row that has produced it is padded with it, and generation stops once every row has. Runs in
        eval mode (no dropout) and restores the previous mode afterwards.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
        was_training = self.training
        self.eval()
        try:
            finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
            for _ in range(max_new_tokens):
                logits, _ = self(idx[:, -self.config.block_size:])
                logits = logits[:, -1, :].float()
                if temperature == 0:
                    next_id = logits.argmax(dim=-1)
                else:
                    probs = F.softmax(self._filter_logits(logits / temperature, top_k, top_p), dim=-1)
                    next_id = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                if eot_id is not None:
                    next_id = torch.where(finished, torch.full_like(next_id, eot_id), next_id)
                    finished |= next_id == eot_id
                idx = torch.cat((idx, next_id.unsqueeze(1)), dim=1)
                if eot_id is not None and bool(finished.all()):
                    break
        finally:
            self.train(was_training)
        return idx

    @staticmethod
    def _filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
        """Set logits outside the top-k and outside the nucleus of mass top_p to -inf; (B, vocab)."""
        if top_k is not None and top_k < logits.size(-1):
            kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth_best, float("-inf"))
        if top_p is not None and top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            sorted_probs = F.softmax(sorted_logits, dim=-1)
            # Drop a token when the tokens ranked above it already reach top_p; the best one always stays.
            mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
            drop_sorted = mass_before >= top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        return logits
