"""SentencePiece tokenizer: train on captions, load a `.model`, tokenize.

Every tokenized row is `[start] pieces... [end] [pad]...`, exactly
`context_length` long. Truncation drops pieces from the end of the caption but
always keeps the end-of-text token, where the text encoder pools.
"""

from __future__ import annotations

import io
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from absl import logging
from etils import epath

# Ids given to the special pieces when this package trains a model.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class TokenizerError(ValueError):
  """A SentencePiece model file is missing, invalid or lacks a needed piece."""


class Tokenizer:
  """Turns captions into fixed-length int32 rows of SentencePiece ids."""

  def __init__(self, model_proto: bytes, context_length: int,
               source: str = "<memory>"):
    self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
    self.model_proto = model_proto
    self.context_length = context_length
    self.bos_id = self.processor.bos_id()
    self.eos_id = self.processor.eos_id()
    pad_id = self.processor.pad_id()
    if self.eos_id < 0:
      raise TokenizerError(
          f"The SentencePiece model {source} has no end-of-text piece "
          "(eos_id=-1); the text encoder pools at that token. Retrain it "
          "with --eos_id set, or leave tokenizer.model_path empty to train "
          "one on the training captions.")
    self.pad_id = pad_id if pad_id >= 0 else 0
    if self.pad_id == self.eos_id:
      raise TokenizerError(f"The SentencePiece model {source} uses one id for "
                       "padding and end of text; they must differ.")

  @property
  def vocab_size(self) -> int:
    return self.processor.get_piece_size()

  @classmethod
  def from_file(cls, path, context_length: int) -> "Tokenizer":
    """Load a `.model` file from a local path or a bucket (gs://...)."""
    path = epath.Path(path)
    if not path.exists():
      raise TokenizerError(
          f"Tokenizer model {path!r} not found; set tokenizer.model_path to "
          "an existing SentencePiece .model file, or leave it empty to "
          "train one on the training captions.")
    proto = path.read_bytes()
    try:
      return cls(proto, context_length, source=path)
    except RuntimeError as e:
      raise TokenizerError(
          f"{path!r} is not a valid SentencePiece model ({e}); set "
          "tokenizer.model_path to a .model file written by SentencePiece."
      ) from None

  def save(self, path) -> None:
    """Write the model file (through a temporary file, then a rename)."""
    path = epath.Path(path)
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_bytes(self.model_proto)
    tmp.replace(path)

  def tokenize(self, captions: Sequence[str]) -> np.ndarray:
    """Return int32 ids of shape (len(captions), context_length)."""
    rows = np.full((len(captions), self.context_length), self.pad_id,
                   np.int32)
    pieces = self.processor.encode(list(captions))
    body_length = self.context_length - 2 if self.bos_id >= 0 else (
        self.context_length - 1)
    for i, ids in enumerate(pieces):
      ids = ids[:body_length]
      if self.bos_id >= 0:
        ids = [self.bos_id] + ids
      ids.append(self.eos_id)
      rows[i, :len(ids)] = ids
    return rows


def train_tokenizer(captions: Iterable[str], vocab_size: int,
                    context_length: int, model_type: str = "bpe") -> Tokenizer:
  """Train a SentencePiece model (`model_type` "bpe" or "unigram").

  `vocab_size` is an upper bound: a small corpus yields fewer pieces
  (SentencePiece's hard_vocab_limit is off), and the model then uses the
  smaller vocabulary.
  """
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(captions),
      model_writer=model,
      vocab_size=vocab_size,
      hard_vocab_limit=False,
      model_type=model_type,
      character_coverage=1.0,
      pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
      num_threads=1,  # one thread keeps the trained model reproducible
      minloglevel=2)
  tokenizer = Tokenizer(model.getvalue(), context_length)
  if tokenizer.vocab_size < vocab_size:
    logging.info("Tokenizer: the captions yield %d pieces, fewer than "
                 "tokenizer.vocab_size=%d; using %d.", tokenizer.vocab_size,
                 vocab_size, tokenizer.vocab_size)
  return tokenizer
