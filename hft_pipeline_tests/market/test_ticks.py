"""Symbol validation: the rule of docs/architecture.md#symbols, matched against the whole name."""

from __future__ import annotations

import pytest

from hft_pipeline.market.ticks import (
    SYMBOL_PATTERN,
    SYMBOL_REGEX,
    InvalidSymbolError,
    is_valid_symbol,
    validate_symbol,
)

GOOD = ["R_100", "frxEURUSD", "PETR4", "1HZ10V", "BTC-USD", "ES.F", "x" * 32, "9"]
BAD = [
    "NLSYM\n",  # Python's `$` matches before a final newline; a full match does not
    "PETR4\n\n",
    "\nPETR4",
    "PETR4\r",
    "a b",
    "A,B",
    "bad|sym",
    "a/b",
    "",
    "_X",
    "-X",
    ".X",
    "x" * 33,
    "PETR4\x00",
    "PÉTR4",
    "\uff30ETR4",  # fullwidth P
]


@pytest.mark.parametrize("symbol", GOOD)
def test_legal_symbols_pass_unchanged(symbol):
    assert validate_symbol(symbol) == symbol and is_valid_symbol(symbol)


@pytest.mark.parametrize("symbol", BAD)
def test_illegal_symbols_are_refused(symbol):
    with pytest.raises(InvalidSymbolError, match="invalid symbol"):
        validate_symbol(symbol)
    assert not is_valid_symbol(symbol)
    assert SYMBOL_PATTERN.match(symbol) is None  # safe even where a caller uses match


@pytest.mark.parametrize("value", [None, 5, b"PETR4", ["PETR4"]])
def test_non_strings_are_refused(value):
    with pytest.raises(InvalidSymbolError):
        validate_symbol(value)
    assert not is_valid_symbol(value)


def test_the_schema_pattern_states_the_same_grammar():
    """SYMBOL_REGEX (OpenAPI, where `$` ends the text) equals SYMBOL_PATTERN on every case."""
    import re

    schema = re.compile(SYMBOL_REGEX)
    for symbol in GOOD + [s for s in BAD if "\n" not in s[-1:]]:
        assert (schema.match(symbol) is not None) == is_valid_symbol(symbol), symbol
