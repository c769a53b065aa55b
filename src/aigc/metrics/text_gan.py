"""Text-GAN metrics on tokenized sentences: BLEU and Self-BLEU by the Texygen protocol
(Zhu et al. 2018), used by the text-GAN literature.

BLEU-n of a set of generated sentences is the mean *sentence* BLEU of each one against the
whole reference set (every test sentence is a reference), with uniform weights 1/n over the
1..n-gram precisions and smoothing method 1 of Chen & Cherry (2014): a zero n-gram count
becomes 0.1 (the numbers of NLTK's ``sentence_bleu(..., smoothing_function=method1)``,
computed here without NLTK and fast enough for 10,000 references: each n-gram's maximum
count over the references is tabulated once). Self-BLEU-n (diversity; lower is more
diverse) scores each generated sentence against all the *other* generated ones.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

Sentence = Sequence[str]
EPSILON = 0.1  # smoothing method 1


def ngram_counts(sentence: Sentence, n: int) -> Counter:
    return Counter(tuple(sentence[i:i + n]) for i in range(len(sentence) - n + 1))


class References:
    """Each n-gram's highest count over a set of sentences (and the runner-up, so that one
    sentence can be left out for Self-BLEU), and the sentence lengths."""

    def __init__(self, sentences: Sequence[Sentence], max_n: int):
        self.max_n = max_n
        self.best: dict[tuple, tuple[int, int, int]] = {}  # n-gram -> (max count, sentences at max, runner-up)
        for sentence in sentences:
            for n in range(1, max_n + 1):
                for gram, count in ngram_counts(sentence, n).items():
                    self.best[gram] = _with_count(self.best.get(gram, (0, 0, 0)), count)
        self.lengths = Counter(len(s) for s in sentences)

    def max_count(self, gram: tuple, own: int = 0) -> int:
        """The n-gram's highest count, leaving out a sentence that holds it ``own`` times."""
        best, ties, runner_up = self.best.get(gram, (0, 0, 0))
        return runner_up if own and own == best and ties == 1 else best

    def closest_length(self, length: int, leave_out: bool = False) -> int:
        """NLTK's effective reference length: the closest, the shorter one on a tie."""
        lengths = [r for r, k in self.lengths.items() if k > (1 if leave_out and r == length else 0)]
        return min(lengths, key=lambda r: (abs(r - length), r))


def _with_count(entry: tuple[int, int, int], count: int) -> tuple[int, int, int]:
    best, ties, runner_up = entry
    if count > best:
        return count, 1, best
    if count == best:
        return best, ties + 1, runner_up
    return best, ties, max(runner_up, count)


def sentence_bleu(hypothesis: Sentence, references: References, n: int, leave_out: bool = False) -> float:
    """BLEU-n of one sentence against ``references`` (leave_out: it is one of them, skip it)."""
    numerators, denominators = [], []
    for order in range(1, n + 1):
        counts = ngram_counts(hypothesis, order)
        numerators.append(sum(min(c, references.max_count(g, c if leave_out else 0)) for g, c in counts.items()))
        denominators.append(max(1, sum(counts.values())))
    if numerators[0] == 0:
        return 0.0
    log_precision = sum(math.log((num if num else EPSILON) / den) for num, den in zip(numerators, denominators))
    c, r = len(hypothesis), references.closest_length(len(hypothesis), leave_out)
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return brevity * math.exp(log_precision / n)


def bleu(hypotheses: Sequence[Sentence], references: Sequence[Sentence] | References, n: int) -> float:
    """Texygen BLEU-n: mean sentence BLEU of each hypothesis against all references."""
    if not isinstance(references, References):
        references = References(references, n)
    return sum(sentence_bleu(h, references, n) for h in hypotheses) / len(hypotheses)


def self_bleu(sentences: Sequence[Sentence], n: int) -> float:
    """Texygen Self-BLEU-n: mean BLEU of each sentence against all the others."""
    if len(sentences) < 2:
        raise ValueError("Self-BLEU needs at least two sentences")
    table = References(sentences, n)
    return sum(sentence_bleu(s, table, n, leave_out=True) for s in sentences) / len(sentences)
