"""Up-weighting clinical terms in the answer (RadFM's intent: weight 3 on entity tokens)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from radfm.model.tokenizer import IGNORE_INDEX, RadFMTokenizer
from radfm.terms import TERMS_FILE, load_terms  # noqa: F401 (re-exported)


class TermWeighter:
    """Gives ``weight`` to answer tokens that spell a term from the list (matched as token sequences)."""

    def __init__(self, tokenizer: RadFMTokenizer, terms: Iterable[str], weight: float = 3.0) -> None:
        self.weight = weight
        patterns: set[tuple[int, ...]] = set()
        for term in terms:
            for variant in (term, " " + term, term.capitalize(), " " + term.capitalize()):
                ids = tuple(tokenizer.encode_text(variant))
                if ids:
                    patterns.add(ids)
        # Index by first token so the scan is one dict lookup per answer token.
        self.by_first: dict[int, list[tuple[int, ...]]] = {}
        for pat in sorted(patterns, key=len, reverse=True):
            self.by_first.setdefault(pat[0], []).append(pat)

    def __call__(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` B×T → weights B×T (1 elsewhere, ``weight`` on term tokens, 0 where ignored)."""
        weights = torch.ones_like(labels, dtype=torch.float)
        rows = labels.tolist()
        for b, row in enumerate(rows):
            n = len(row)
            for t in range(n):
                if row[t] == IGNORE_INDEX:
                    continue
                for pat in self.by_first.get(row[t], ()):
                    k = len(pat)
                    if tuple(row[t:t + k]) == pat:
                        weights[b, t:t + k] = self.weight
                        break
        weights[labels == IGNORE_INDEX] = 0.0
        return weights
