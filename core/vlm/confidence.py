"""Per-field confidence of an answer, from the log-probabilities of its generated tokens.

Both backends hand over the answer's tokens as `(bytes, logprob)` pairs: SGLang's
`choices[0].logprobs.content[].{bytes, logprob}` (taken after the grammar's mask, see
docs/extraction.md), the transformers backend the same from its processed scores. The answer is
scanned as JSON with byte positions; every value gets

    confidence = exp(sum of the logprobs of the tokens that overlap the value's bytes)

i.e. the probability, among the answers the grammar allowed, of writing exactly that value there
(tokens that straddle a boundary, like `":"` or `"}`, count in full: the grammar forces most of
them, probability 1). Values are named by path as `human_labels.field` names them: `<field>`,
`<list>` (the whole list), `<list>[0]` (an item), `<list>[0].<field>`.

- A string's span includes its quotes: the closing quote is the decision that it ended.
- A number's span includes the one character after it (`,` `}` `]`): the token that stops the
  digits is the decision that the number is not longer.
- A list's own confidence is the probability of its whole span `[...]`: its items, their order
  and its length (the `,` or `]` after each item decides whether another follows), so an empty
  list has one too. Its items have their own rows. No rule over the items' confidences alone (a
  min or a mean) sees the decision to stop the list, and the span never exceeds any item's.

When the tokens are missing (a server that returns no logprobs) or their bytes do not spell the
answer, every value's confidence is None: never a made-up number.
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate
from typing import Any

Token = tuple[bytes, float]  # a generated token's bytes and its log-probability

_WHITESPACE = b" \t\r\n"
_NUMBER = frozenset(b"+-0123456789.eE")


class _Scanner:
    """A JSON scanner that records the byte span of every value below the root, by path."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0
        self.spans: dict[str, tuple[int, int]] = {}

    def skip(self) -> None:
        data, at = self.data, self.at
        while at < len(data) and data[at] in _WHITESPACE:
            at += 1
        self.at = at

    def expect(self, byte: int) -> None:
        self.skip()
        if self.at >= len(self.data) or self.data[self.at] != byte:
            raise ValueError(f"expected {chr(byte)!r} at byte {self.at}")
        self.at += 1

    def value(self, path: str) -> None:
        self.skip()
        data = self.data
        if self.at >= len(data):
            raise ValueError("unexpected end of the answer")
        start, first = self.at, data[self.at]
        if first == 0x7B:  # {
            self.members(path)
        elif first == 0x5B:  # [
            self.items(path)
        elif first == 0x22:  # "
            self.at = self.string_end(start)
        elif first in _NUMBER:
            end = start
            while end < len(data) and data[end] in _NUMBER:
                end += 1
            self.at = end
            if path:  # the character that ended the number: its decision to stop
                self.spans[path] = (start, min(end + 1, len(data)))
            return
        else:
            for word in (b"true", b"false", b"null"):
                if data.startswith(word, start):
                    self.at = start + len(word)
                    break
            else:
                raise ValueError(f"unexpected byte {chr(first)!r} at {start}")
        if path:
            self.spans[path] = (start, self.at)

    def string_end(self, start: int) -> int:
        """The byte after the closing quote of the string opening at `start`."""
        data, at = self.data, start + 1
        while True:
            quote = data.find(b'"', at)
            if quote < 0:
                raise ValueError("unterminated string")
            backslashes = 0
            while data[quote - 1 - backslashes] == 0x5C:  # an escaped quote is not the end
                backslashes += 1
            if backslashes % 2 == 0:
                return quote + 1
            at = quote + 1

    def members(self, path: str) -> None:
        self.at += 1
        self.skip()
        if self.data[self.at : self.at + 1] == b"}":
            self.at += 1
            return
        while True:
            self.skip()
            if self.data[self.at : self.at + 1] != b'"':
                raise ValueError(f"expected a key at byte {self.at}")
            key_start = self.at
            self.at = self.string_end(key_start)
            key = _decode_key(self.data[key_start : self.at])
            self.expect(0x3A)  # :
            self.value(f"{path}.{key}" if path else key)
            self.skip()
            if self.data[self.at : self.at + 1] == b",":
                self.at += 1
                continue
            self.expect(0x7D)  # }
            return

    def items(self, path: str) -> None:
        self.at += 1
        self.skip()
        if self.data[self.at : self.at + 1] == b"]":
            self.at += 1
            return
        index = 0
        while True:
            self.value(f"{path}[{index}]")
            index += 1
            self.skip()
            if self.data[self.at : self.at + 1] == b",":
                self.at += 1
                continue
            self.expect(0x5D)  # ]
            return


def _decode_key(quoted: bytes) -> str:
    return str(json.loads(quoted)) if b"\\" in quoted else quoted[1:-1].decode()


def value_spans(answer: str | bytes) -> dict[str, tuple[int, int]]:
    """Byte span `[start, end)` in the UTF-8 answer of every value below its root, by path.

    Raises ValueError when the answer is not one JSON value (with nothing but whitespace after).
    """
    data = answer.encode() if isinstance(answer, str) else answer
    scanner = _Scanner(data)
    scanner.value("")
    scanner.skip()
    if scanner.at != len(data):
        raise ValueError(f"trailing bytes after the answer at {scanner.at}")
    return scanner.spans


def field_confidences(
    answer: str, tokens: Sequence[Token] | None
) -> dict[str, float | None] | None:
    """Every value's confidence by path (module docstring); None values without usable tokens.

    Returns None only when the answer is not JSON at all (no field to name)."""
    data = answer.encode()
    try:
        spans = value_spans(data)
    except (ValueError, IndexError):
        return None
    if not tokens:
        return dict.fromkeys(spans)
    ends = list(accumulate(len(piece) for piece, _ in tokens))
    # The tokens must spell the answer; any beyond it (a stop token's text) are not part of it.
    if ends[-1] < len(data) or b"".join(piece for piece, _ in tokens)[: len(data)] != data:
        return dict.fromkeys(spans)
    logprobs = [logprob for _, logprob in tokens]
    out: dict[str, float | None] = {}
    for path, (start, end) in spans.items():
        first = bisect_right(ends, start)  # the first token ending after `start`
        total = 0.0
        index = first
        while index < len(ends) and ends[index] - len(tokens[index][0]) < end:
            total += logprobs[index]
            index += 1
        out[path] = math.exp(total)
    return out


def sglang_tokens(choice: dict[str, Any]) -> list[Token] | None:
    """The generated tokens of an OpenAI-style chat choice (`logprobs.content[]`), or None when
    the server sent none (not asked, or a server that does not support them)."""
    logprobs = choice.get("logprobs")
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not content:
        return None
    tokens: list[Token] = []
    for entry in content:
        piece, logprob = entry.get("bytes"), entry.get("logprob")
        if logprob is None:
            return None
        if piece is None:  # OpenAI: null where a token has no byte form; the text then
            piece = str(entry.get("token") or "").encode()  # must still line up (checked)
        tokens.append((bytes(piece), float(logprob)))
    return tokens
