"""Text tokenizers: a byte-level BPE trained here, or a published Gemma/PaliGemma tokenizer.

`TextTokenizer.train(texts, vocab_size)` trains a byte-level BPE with the `tokenizers` library
(special tokens <pad>=0, <bos>=1, <eos>=2; every string is encodable). `TextTokenizer.load(path)`
reads a `tokenizer.json` (ours, or Gemma's) or a SentencePiece `.model` (needs the optional
`sentencepiece` package). Ids are the model's text ids [0, vocab_size); the prompt builder checks
they fit below the state/action ranges reserved at the end of the model vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ("<pad>", "<bos>", "<eos>")


class TextTokenizer:
    def __init__(self, backend, pad_id: int, bos_id: int, eos_id: int, vocab_size: int):
        self._backend = backend
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.vocab_size = vocab_size

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1024) -> TextTokenizer:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIALS),
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(texts, trainer)
        return cls._from_hf(tok)

    @classmethod
    def _from_hf(cls, tok: Tokenizer) -> TextTokenizer:
        ids = [tok.token_to_id(s) for s in SPECIALS]
        if None in ids:
            missing = [s for s, i in zip(SPECIALS, ids, strict=True) if i is None]
            raise ValueError(f"tokenizer has no {missing} token(s)")
        return cls(tok, *ids, vocab_size=tok.get_vocab_size())

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if path.suffix == ".model":
            try:
                import sentencepiece as spm
            except ImportError as exc:
                raise ImportError(
                    f"{path}: loading a SentencePiece .model needs the 'sentencepiece' package, which is not "
                    f"installed; install it, or use the model's tokenizer.json instead"
                ) from exc
            sp = spm.SentencePieceProcessor(model_file=str(path))
            return cls(_SentencePiece(sp), sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.get_piece_size())
        if not path.exists():
            raise FileNotFoundError(f"{path}: no tokenizer file")
        return cls._from_hf(Tokenizer.from_file(str(path)))

    @property
    def file_suffix(self) -> str:
        """How this tokenizer is stored: ".json" (tokenizers library) or ".model" (SentencePiece)."""
        return ".json" if isinstance(self._backend, Tokenizer) else ".model"

    def save(self, path: str | Path) -> None:
        """Write the tokenizer to `path`, whose suffix must be `file_suffix`."""
        path = Path(path)
        if path.suffix != self.file_suffix:
            raise ValueError(f"{path}: this tokenizer is saved as a {self.file_suffix} file")
        if isinstance(self._backend, Tokenizer):
            self._backend.save(str(path))
        else:
            path.write_bytes(self._backend.sp.serialized_model_proto())

    def encode(self, text: str) -> list[int]:
        """Text -> ids, without BOS/EOS."""
        if isinstance(self._backend, Tokenizer):
            return list(self._backend.encode(text, add_special_tokens=False).ids)
        return self._backend.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self._backend.decode(list(ids))


class _SentencePiece:
    def __init__(self, sp):
        self.sp = sp

    def encode(self, text: str) -> list[int]:
        return list(self.sp.encode(text))

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(ids)
