"""Text metrics against hand-checked values: sacrebleu's documented example, a tiny ROUGE pair."""

from __future__ import annotations

import pytest

from aigc.metrics.text import accuracy_f1, bleu, chrf, distinct, rouge, split_sentences

# The example in sacrebleu's README: three system sentences, two reference streams.
SYSTEM = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
REFS = [["The dog bit the man.", "It was not unexpected.", "The man bit him first."],
        ["The dog had bit the man.", "No one was surprised.", "The man had bitten the dog."]]


def test_bleu_matches_sacrebleus_documented_example():
    result = bleu(SYSTEM, REFS)
    assert result["bleu"] == pytest.approx(48.53, abs=0.005)  # README: BLEU = 48.53
    assert result["bleu_signature"].startswith("nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp|version:")


def test_chrf_matches_sacrebleus_documented_example():
    result = chrf(SYSTEM, REFS)
    assert result["chrf"] == pytest.approx(59.73, abs=0.005)  # README: chrF2 = 59.73
    assert "nrefs:2" in result["chrf_signature"]


def test_a_perfect_hypothesis_scores_100_and_misaligned_streams_are_refused():
    assert bleu(["a small cat sits on the mat"], [["a small cat sits on the mat"]])["bleu"] == pytest.approx(100)
    with pytest.raises(ValueError, match="2 lines for 1 hypotheses"):
        bleu(["a"], [["a", "b"]])


def test_rouge_on_a_tiny_pair():
    # hypothesis vs reference: 5 of 6 unigrams shared, 3 of 5 bigrams, LCS "the cat on the mat" = 5.
    result = rouge(["the cat lay on the mat"], [["the cat sat on the mat"]])
    assert result["rouge1"] == pytest.approx(100 * 5 / 6)
    assert result["rouge2"] == pytest.approx(100 * 3 / 5)
    assert result["rougeL"] == pytest.approx(100 * 5 / 6)
    assert result["rougeLsum"] == pytest.approx(100 * 5 / 6)


def test_rouge_lsum_uses_sentences_without_punkt():
    assert split_sentences("It rained. We stayed in!  Why? ok") == ["It rained.", "We stayed in!", "Why?", "ok"]
    # Sentence order does not matter to ROUGE-Lsum (union LCS per sentence), but does to ROUGE-L.
    result = rouge(["We stayed in. It rained."], [["It rained. We stayed in."]])
    assert result["rougeLsum"] == pytest.approx(100)
    assert result["rougeL"] < 100


def test_distinct_counts_unique_ngrams():
    result = distinct(["a b a b", "a c"])  # unigrams a b a b a c: 3 of 6; bigrams ab ba ab ac: 3 of 4
    assert result == {"distinct1": pytest.approx(50.0), "distinct2": pytest.approx(75.0)}


def test_accuracy_and_macro_f1():
    result = accuracy_f1(["x", "x", "y", "z"], ["x", "y", "y", "y"])
    # x: tp1 fp1 fn0 -> 2/3; y: tp1 fp0 fn2 -> 2/4; z: tp0 -> 0.
    assert result["accuracy"] == pytest.approx(50.0)
    assert result["macro_f1"] == pytest.approx(100 * (2 / 3 + 1 / 2 + 0) / 3)
