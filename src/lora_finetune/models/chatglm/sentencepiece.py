"""ChatGLM2/3's SentencePiece `tokenizer.model`, read with a minimal protobuf reader (so
protobuf is not a dependency)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ModelError

_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM, _BPE = 1, 2


@dataclass(frozen=True)
class _SentencePiece:
    pieces: list[tuple[str, float, int]]  # (piece, score, type)
    model_type: int
    byte_fallback: bool
    unk_id: int
    eos_id: int
    add_dummy_prefix: bool
    remove_extra_whitespaces: bool
    escape_whitespaces: bool
    treat_whitespace_as_suffix: bool
    precompiled_charsmap: bytes


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def _proto_fields(buf: bytes) -> dict[int, list[Any]]:
    """Field number -> raw values of one protobuf message (varints as int, the rest as bytes)."""
    fields: dict[int, list[Any]] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


def _field(fields: dict[int, list[Any]], number: int, default: Any) -> Any:
    values = fields.get(number)
    return values[-1] if values else default


def _int32(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _read_sentencepiece(path: Path) -> _SentencePiece:
    try:
        model = _proto_fields(path.read_bytes())
        pieces = [_piece(raw) for raw in model.get(1, [])]
        trainer = _proto_fields(_field(model, 2, b""))
        normalizer = _proto_fields(_field(model, 3, b""))
    except (OSError, IndexError, ValueError, UnicodeDecodeError) as exc:
        raise ModelError(
            f"{path} is not a SentencePiece model ({exc}). ChatGLM2/3 ship a SentencePiece "
            "tokenizer.model; re-download it from the original checkpoint."
        ) from exc
    if not pieces:
        raise ModelError(f"{path} holds no SentencePiece vocabulary; re-download the original tokenizer.model.")
    return _SentencePiece(
        pieces=pieces,
        model_type=_field(trainer, 3, _UNIGRAM),
        byte_fallback=bool(_field(trainer, 35, 0)),
        unk_id=_int32(_field(trainer, 40, 0)),
        eos_id=_int32(_field(trainer, 42, 2)),
        add_dummy_prefix=bool(_field(normalizer, 3, 1)),
        remove_extra_whitespaces=bool(_field(normalizer, 4, 1)),
        escape_whitespaces=bool(_field(normalizer, 5, 1)),
        treat_whitespace_as_suffix=bool(_field(trainer, 24, 0)),
        precompiled_charsmap=_field(normalizer, 2, b""),
    )


def _piece(raw: bytes) -> tuple[str, float, int]:
    fields = _proto_fields(raw)
    score = struct.unpack("<f", _field(fields, 2, b"\0\0\0\0"))[0]
    return _field(fields, 1, b"").decode("utf-8"), score, _field(fields, 3, _NORMAL)
