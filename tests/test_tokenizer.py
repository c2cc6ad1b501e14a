"""SentencePiece training, loading and fixed-length tokenization."""

import io

import numpy as np
import pytest
import sentencepiece as spm

from shared_encoder_jax import tokenizer as tokenizer_lib

CAPTIONS = [f"{size} {kind} in the {side} {level} zone"
            for size in ("small", "large", "tiny")
            for kind in ("nodule", "mass", "cavity", "opacity")
            for side in ("left", "right")
            for level in ("upper", "lower")] * 5


@pytest.fixture(scope="module")
def tokenizer():
  return tokenizer_lib.train_tokenizer(CAPTIONS, vocab_size=200,
                                       context_length=8)


def test_rows_have_start_end_and_padding(tokenizer):
  rows = tokenizer.tokenize(["small mass", "tiny cavity in the left zone"])
  assert rows.shape == (2, 8)
  assert rows.dtype == np.int32
  assert rows[0, 0] == tokenizer.bos_id
  end = list(rows[0]).index(tokenizer.eos_id)
  assert np.all(rows[0, end + 1:] == tokenizer.pad_id)


def test_truncation_keeps_end_of_text(tokenizer):
  long_caption = " ".join(CAPTIONS[:6])
  row = tokenizer.tokenize([long_caption])[0]
  assert row[0] == tokenizer.bos_id
  assert row[-1] == tokenizer.eos_id
  assert tokenizer.pad_id not in row


def test_saved_model_file_is_accepted(tokenizer, tmp_path):
  path = str(tmp_path / "captions.model")
  tokenizer.save(path)
  loaded = tokenizer_lib.Tokenizer.from_file(path, context_length=8)
  np.testing.assert_array_equal(loaded.tokenize(CAPTIONS[:4]),
                                tokenizer.tokenize(CAPTIONS[:4]))


def test_model_without_end_of_text_is_rejected(tmp_path):
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(CAPTIONS), model_writer=model, vocab_size=40,
      eos_id=-1, hard_vocab_limit=False, minloglevel=2)
  path = tmp_path / "no_eos.model"
  path.write_bytes(model.getvalue())
  with pytest.raises(tokenizer_lib.TokenizerError, match="no end-of-text"):
    tokenizer_lib.Tokenizer.from_file(str(path), context_length=8)


def test_missing_and_invalid_files_are_named(tmp_path):
  with pytest.raises(tokenizer_lib.TokenizerError, match="missing.model"):
    tokenizer_lib.Tokenizer.from_file(str(tmp_path / "missing.model"), 8)
  bad = tmp_path / "bad.model"
  bad.write_bytes(b"not a model")
  with pytest.raises(tokenizer_lib.TokenizerError, match="bad.model"):
    tokenizer_lib.Tokenizer.from_file(str(bad), 8)


def test_training_is_reproducible():
  first = tokenizer_lib.train_tokenizer(CAPTIONS, 200, 8)
  second = tokenizer_lib.train_tokenizer(CAPTIONS, 200, 8)
  assert first.model_proto == second.model_proto
