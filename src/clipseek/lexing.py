"""The token cursor the YQL and document-selection parsers share, and their one rule for numbers.

Tokens are ``(kind, text, position)``. Numbers in a query are 64-bit integers or finite doubles, as in Vespa:
anything else is the parser's syntax error naming the column, never an overflow deeper down.
"""

from __future__ import annotations

from typing import NoReturn

Token = tuple[str, str, int]
INT64 = 2 ** 63


class Cursor:
    """A position in a list of tokens; subclasses say how to :meth:`fail`."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[Token] = []
        self.i = 0

    def fail(self, pos: int, message: str) -> NoReturn:
        raise NotImplementedError

    def peek(self) -> Token:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("eof", "", len(self.text))

    def take(self) -> Token:
        tok = self.peek()
        self.i += 1
        return tok

    def is_word(self, word: str) -> bool:
        kind, text, _ = self.peek()
        return kind == "name" and text.lower() == word

    def number(self, text: str, pos: int) -> int | float:
        """A numeric token's value: a 64-bit integer, or a finite double."""
        if any(c in text for c in ".eE"):
            value = float(text)
            if value in (float("inf"), float("-inf")):
                self.fail(pos, f"{text[:30]} is out of range")
            return value
        if len(text.lstrip("-")) > 19 or not -INT64 <= int(text) < INT64:
            self.fail(pos, f"{text[:30]} does not fit in 64 bits")
        return int(text)
