"""The synthetic "oracle" of SeqGAN (Yu et al. 2017): a fixed random 1-layer LSTM that stands
in for the true data distribution, so a generator's samples can be scored exactly
(NLL-oracle: the oracle's per-token negative log-likelihood of generated sequences).

The parameters come in TensorFlow layout (``oracle_params.npz``: ``emb``, gate matrices
``Wi Wf Wog Wc`` used as ``x @ W``, ``Ui Uf Uog Uc`` used as ``h @ U``, biases ``bi bf bog bc``,
output ``Wo``, ``bo``). ``torch.nn.LSTM`` orders its gates i, f, g, o and stores weights as
``W @ x``, so the port concatenates the *transposed* matrices in that order.
Shapes: B batch, L sequence length, V vocabulary, E embedding, H hidden.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from aigc.errors import UserError
from aigc.gpt.sampling import draw

START_TOKEN = 0  # SeqGAN feeds emb[0] as the first input
GATES = ("i", "f", "c", "og")  # TensorFlow names in torch's gate order i, f, g, o
ARRAYS = ("emb", "Wo", "bo", *(f"{kind}{gate}" for gate in GATES for kind in ("W", "U", "b")))


class Oracle(nn.Module):
    def __init__(self, vocab_size: int = 5000, emb_dim: int = 32, hidden: int = 32):
        super().__init__()
        self.emb = nn.Embedding(vocab_size, emb_dim)
        self.lstm = nn.LSTM(emb_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab_size)

    @property
    def vocab_size(self) -> int:
        return self.emb.num_embeddings

    @classmethod
    def load(cls, path: str | Path) -> "Oracle":
        """The oracle in ``oracle_params.npz``; wrong or missing arrays are a UserError."""
        arrays = _read_npz(Path(path))
        V, E = arrays["emb"].shape
        H = arrays["Ui"].shape[0] if arrays["Ui"].ndim == 2 else -1
        expected = {"emb": (V, E), "Wo": (H, V), "bo": (V,)}
        for gate in GATES:
            expected.update({f"W{gate}": (E, H), f"U{gate}": (H, H), f"b{gate}": (H,)})
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise UserError(f"{path}: array {name!r} has shape {list(arrays[name].shape)}, expected "
                                f"{list(shape)} for vocabulary {V}, embedding {E}, hidden {H}")
        oracle = cls(V, E, H)
        t = {name: torch.from_numpy(np.asarray(a, dtype=np.float32)) for name, a in arrays.items()}
        with torch.no_grad():
            oracle.emb.weight.copy_(t["emb"])
            oracle.lstm.weight_ih_l0.copy_(torch.cat([t[f"W{g}"].T for g in GATES]))  # (4H, E)
            oracle.lstm.weight_hh_l0.copy_(torch.cat([t[f"U{g}"].T for g in GATES]))  # (4H, H)
            oracle.lstm.bias_ih_l0.copy_(torch.cat([t[f"b{g}"] for g in GATES]))
            oracle.lstm.bias_hh_l0.zero_()
            oracle.out.weight.copy_(t["Wo"].T)  # (V, H)
            oracle.out.bias.copy_(t["bo"])
        return oracle.eval()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) -> logits (B, L, V) of each token given the ones before it."""
        start = torch.full_like(tokens[:, :1], START_TOKEN)
        h, _ = self.lstm(self.emb(torch.cat([start, tokens[:, :-1]], dim=1)))  # (B, L, H)
        return self.out(h)

    @torch.no_grad()
    def nll(self, tokens: torch.Tensor, batch_size: int = 1000) -> float:
        """Mean per-token negative log-likelihood (nats) of tokens (N, L) under the oracle."""
        return -self.log_prob(tokens, batch_size).sum().item() / tokens.numel()

    @torch.no_grad()
    def log_prob(self, tokens: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """log p(x) (N,) of each whole sequence of tokens (N, L) under the oracle, in float64."""
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise UserError(f"token ids must lie in [0, {self.vocab_size}) to be scored by the oracle")
        # cross_entropy of (b * L, V) rows, the softmax along contiguous memory: 1.7x faster than of
        # the (b, V, L) transpose
        chunks = [-F.cross_entropy(self(chunk).flatten(0, 1), chunk.flatten(), reduction="none")
                  .view_as(chunk).double().sum(dim=1) for chunk in tokens.split(batch_size)]  # (b,)
        return torch.cat(chunks) if chunks else torch.zeros(0, dtype=torch.float64)

    @torch.no_grad()
    def sample(self, n: int, length: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n sequences (n, length) drawn token by token at temperature 1."""
        token = torch.full((n,), START_TOKEN, dtype=torch.long)
        state, out = None, []
        for _ in range(length):
            h, state = self.lstm(self.emb(token)[:, None], state)  # (n, 1, H)
            token = draw(self.out(h[:, 0]).softmax(dim=-1), generator)
            out.append(token)
        return torch.stack(out, dim=1)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise UserError(f"oracle parameters not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"cannot read oracle parameters {path}: {exc}") from None
    missing = [name for name in ARRAYS if name not in arrays]
    if missing:
        raise UserError(f"{path} is not a SeqGAN oracle: missing array(s) {', '.join(missing)}")
    return arrays
