"""Tokenizers: exact round trips (property-based for byte-level BPE), files, and bad input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aigc.data.tokenizers import Tokenizer, train_bpe, train_char, train_tokenizer
from aigc.errors import UserError

CORPUS = ("The quick brown fox jumps over the lazy dog. " * 20 + "naïve café — ünïcödé ✓ 日本語\n").encode()


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return train_bpe(CORPUS, vocab_size=300)


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bpe_round_trips_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.binary())
def test_bpe_round_trips_any_bytes(bpe, data):
    assert bpe.decode_bytes(bpe.encode_bytes(data)) == data


def test_bpe_learns_merges(bpe):
    assert bpe.vocab_size == 300
    assert len(bpe.encode("The quick brown fox")) < len("The quick brown fox")


def test_bpe_trains_on_bytes_that_are_not_utf8():
    data = b"abc \xff\xfe def \x80" * 50
    tokenizer = train_tokenizer("bpe", data, 270)
    assert tokenizer.decode_bytes(tokenizer.encode_bytes(data)) == data


def test_char_round_trip_and_vocabulary():
    text = "hello, wörld\n\tok"
    tokenizer = train_char(text)
    assert tokenizer.vocab_size == len(set(text))
    ids = tokenizer.encode(text)
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert list(tokenizer.stream_decode(ids)) == list(text)


def test_char_rejects_bytes_that_are_not_utf8():
    with pytest.raises(UserError, match=r"notes\.txt is not UTF-8 .*offset 3.*--tokenizer bpe"):
        train_tokenizer("char", b"abc\xffdef", 0, source="notes.txt")


def test_char_names_unknown_characters_and_the_fix():
    tokenizer = train_char("abc")
    with pytest.raises(UserError, match=r"2 character\(s\) missing.*'x', 'é'.*--tokenizer bpe"):
        tokenizer.encode("abxé")


def test_stream_decode_waits_for_whole_characters(bpe):
    text = "日本語 ✓"
    pieces = list(bpe.stream_decode(bpe.encode_bytes(text.encode())))
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_save_and_load(tmp_path, kind):
    tokenizer = train_tokenizer(kind, CORPUS, 280)
    tokenizer.save(tmp_path / "tokenizer.json")
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.kind == kind
    text = "lazy café 日本"
    assert loaded.encode(text) == tokenizer.encode(text)


def test_corrupt_or_missing_tokenizer_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    with pytest.raises(UserError, match="missing tokenizer file"):
        Tokenizer.load(path)
    path.write_text('{"version": "1.0", "model": {"type": "BPE", "voc')
    with pytest.raises(UserError, match="corrupt tokenizer file"):
        Tokenizer.load(path)


def test_bpe_round_trips_tiny_shakespeare(shared_data):
    data = (shared_data / "shakespeare" / "input.txt").read_bytes()
    tokenizer = train_bpe(data, vocab_size=512)
    ids = tokenizer.encode_bytes(data)
    assert len(ids) < len(data) / 1.5
    assert tokenizer.decode_bytes(ids) == data
