"""Metrics of generated text and of predicted labels.

BLEU (Papineni et al. 2002) and chrF (Popović 2015) come from ``sacrebleu`` so scores are
comparable across papers; each result carries sacrebleu's signature (tokenizer, smoothing,
version), which must be quoted with the score. ROUGE-1/2/L/Lsum (Lin 2004) come from
``rouge-score``; ROUGE-Lsum needs one sentence per line, and we split sentences with a
regular expression instead of nltk's punkt model, which would have to be downloaded.
distinct-n (Li et al. 2016) measures diversity. All scores are on a 0-100 scale.

``references`` follow sacrebleu's convention: a list of reference *streams*, each aligned
with the hypotheses (``[refs]`` for one reference per hypothesis).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def _check_streams(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    for stream in references:
        if len(stream) != len(hypotheses):
            raise ValueError(f"a reference stream has {len(stream)} lines for {len(hypotheses)} hypotheses")


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Corpus BLEU with sacrebleu's defaults (13a tokenization, exponential smoothing)."""
    from sacrebleu.metrics import BLEU

    _check_streams(hypotheses, references)
    metric = BLEU()
    score = metric.corpus_score(list(hypotheses), [list(r) for r in references])
    return {"bleu": score.score, "bleu_signature": str(metric.get_signature())}


def chrf(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Corpus chrF (character 6-grams, beta 2) with sacrebleu's defaults."""
    from sacrebleu.metrics import CHRF

    _check_streams(hypotheses, references)
    metric = CHRF()
    score = metric.corpus_score(list(hypotheses), [list(r) for r in references])
    return {"chrf": score.score, "chrf_signature": str(metric.get_signature())}


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: cut after ., ! or ? followed by white space (no model needed)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def rouge(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Mean ROUGE-1/2/L/Lsum F1 over hypotheses (Porter stemming); with several reference
    streams each hypothesis takes its best-matching reference, as rouge-score's score_multi does."""
    from rouge_score import rouge_scorer

    _check_streams(hypotheses, references)
    types = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=True, split_summaries=False)
    totals = dict.fromkeys(types, 0.0)
    for i, hypothesis in enumerate(hypotheses):
        targets = ["\n".join(split_sentences(stream[i])) for stream in references]
        scores = scorer.score_multi(targets, "\n".join(split_sentences(hypothesis)))
        for name in types:
            totals[name] += scores[name].fmeasure
    return {name: 100 * total / len(hypotheses) for name, total in totals.items()}


def distinct(hypotheses: Sequence[str], orders: Sequence[int] = (1, 2)) -> dict:
    """distinct-n: distinct n-grams / all n-grams over every hypothesis (white-space tokens)."""
    results = {}
    for n in orders:
        grams: Counter = Counter()
        for hypothesis in hypotheses:
            words = hypothesis.split()
            grams.update(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        total = sum(grams.values())
        results[f"distinct{n}"] = 100 * len(grams) / total if total else 0.0
    return results


def accuracy_f1(predictions: Sequence[str], labels: Sequence[str]) -> dict:
    """Accuracy and macro-F1 (the unweighted mean of per-class F1 over every class present in
    the labels or the predictions)."""
    if len(predictions) != len(labels) or not labels:
        raise ValueError(f"need as many predictions as labels, got {len(predictions)} and {len(labels)}")
    correct = sum(p == y for p, y in zip(predictions, labels))
    f1s = []
    for c in sorted(set(labels) | set(predictions)):
        tp = sum(p == c and y == c for p, y in zip(predictions, labels))
        fp = sum(p == c and y != c for p, y in zip(predictions, labels))
        fn = sum(p != c and y == c for p, y in zip(predictions, labels))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"accuracy": 100 * correct / len(labels), "macro_f1": 100 * sum(f1s) / len(f1s)}
