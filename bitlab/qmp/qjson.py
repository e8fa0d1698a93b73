"""QMP's JSON, byte for byte as QEMU 7.2 reads and writes it (qobject/json-*.c, qjson.c).

QEMU does not use a general JSON library on the monitor: a lexer (a state table over
bytes) feeds a *streamer* that cuts the token stream into messages by counting
braces and brackets, and a parser turns each message into a QObject. Their quirks
are part of the protocol a client sees, so they are reproduced exactly:

- a lexical error answers ``JSON parse error, stray '<token so far>'`` at once and
  skips input up to the next structural character or control byte (so one bad byte
  can cause several errors);
- a message ends when its braces and brackets balance (or a closer has no opener),
  so ``}`` alone is a message ("expecting value");
- limits (json-streamer.c): 64 MiB of tokens per message, 2 Mi tokens, nesting
  depth 1024; the error drops the message and parsing goes on with the next token;
- strings are modified UTF-8 (``\\xC0\\x80`` is NUL); noncharacters, surrogates and
  overlong forms are refused; single-quoted strings are accepted;
- integers stay integers while they fit int64 or uint64, else become doubles;
- output: ``", "`` and ``": "`` separators, ``\\uXXXX`` (upper case) for control and
  non-ASCII characters, doubles as ``%.17g`` (``inf`` included), members in QDict
  order.

:class:`JSONStreamer` is incremental: feed it bytes as they arrive; it returns the
messages (or errors) completed so far. :func:`dumps` writes a value as QEMU does.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

MAX_TOKEN_SIZE = 64 << 20  # bytes of tokens in one message (and in one token)
MAX_TOKEN_COUNT = 2 << 20
MAX_NESTING = 1 << 10

# Lexer states (json-lexer.c); 0 is JSON_ERROR.
ERROR, RECOVERY, DQ_ESC, DQ, SQ_ESC, SQ, ZERO, EXP_DIGITS, EXP_SIGN, EXP_E, MANTISSA, MANTISSA_DIGITS, \
    DIGITS, SIGN, KEYWORD, START = range(16)
# Token types.
LCURLY, RCURLY, LSQUARE, RSQUARE, COLON, COMMA, INTEGER, FLOAT, KEYWORD_T, STRING = range(100, 110)
TOKENS = frozenset(range(100, 110))
LOOKAHEAD = 0x100  # the transition does not consume the byte


def _table() -> list[list[int]]:
    """json_lexer[][]: the next state (or token) for every state and byte."""
    t = [[ERROR] * 256 for _ in range(START + 1)]

    def put(state: int, chars: str | range, value: int) -> None:
        for c in (chars if isinstance(chars, range) else map(ord, chars)):
            t[state][c] = value

    digits = "0123456789"
    lower = range(ord("a"), ord("z") + 1)
    put(RECOVERY, range(0, 0x20), START | LOOKAHEAD)
    put(RECOVERY, range(0x20, 0xFE), RECOVERY)
    put(RECOVERY, range(0xFE, 0x100), START | LOOKAHEAD)
    put(RECOVERY, "\t", RECOVERY)
    put(RECOVERY, "[]{}:,", START | LOOKAHEAD)
    for esc, string, quote in ((DQ_ESC, DQ, '"'), (SQ_ESC, SQ, "'")):
        put(esc, range(0x20, 0xFE), string)
        put(string, range(0x20, 0xFE), string)
        put(string, "\\", esc)
        put(string, quote, STRING)
    put(ZERO, range(256), INTEGER | LOOKAHEAD)
    put(ZERO, digits, ERROR)
    put(ZERO, ".", MANTISSA)
    put(EXP_DIGITS, range(256), FLOAT | LOOKAHEAD)
    put(EXP_DIGITS, digits, EXP_DIGITS)
    put(EXP_SIGN, digits, EXP_DIGITS)
    put(EXP_E, "-+", EXP_SIGN)
    put(EXP_E, digits, EXP_DIGITS)
    put(MANTISSA_DIGITS, range(256), FLOAT | LOOKAHEAD)
    put(MANTISSA_DIGITS, digits, MANTISSA_DIGITS)
    put(MANTISSA_DIGITS, "eE", EXP_E)
    put(MANTISSA, digits, MANTISSA_DIGITS)
    put(DIGITS, range(256), INTEGER | LOOKAHEAD)
    put(DIGITS, digits, DIGITS)
    put(DIGITS, "eE", EXP_E)
    put(DIGITS, ".", MANTISSA)
    put(SIGN, "0", ZERO)
    put(SIGN, "123456789", DIGITS)
    put(KEYWORD, range(256), KEYWORD_T | LOOKAHEAD)
    put(KEYWORD, lower, KEYWORD)
    put(START, '"', DQ)
    put(START, "'", SQ)
    put(START, "0", ZERO)
    put(START, "123456789", DIGITS)
    put(START, "-", SIGN)
    for ch, tok in zip("{}[],:", (LCURLY, RCURLY, LSQUARE, RSQUARE, COMMA, COLON)):
        put(START, ch, tok)
    put(START, lower, KEYWORD)
    put(START, " \t\r\n", START)
    return t


TABLE = _table()
# Runs of bytes that keep a state where it is: consumed in one regex match, not byte by byte.
RUNS = {
    DQ: re.compile(rb'[\x20\x21\x23-\x5b\x5d-\xfd]+'),
    SQ: re.compile(rb"[\x20-\x26\x28-\x5b\x5d-\xfd]+"),
    DIGITS: re.compile(rb"[0-9]+"),
    MANTISSA_DIGITS: re.compile(rb"[0-9]+"),
    EXP_DIGITS: re.compile(rb"[0-9]+"),
    KEYWORD: re.compile(rb"[a-z]+"),
}
# Whole tokens the table would read the same way, taken in one match (the common case):
# a structural character, a string, or a keyword or number followed by a byte that ends it.
FAST = re.compile(rb"[ \t\r\n]*(?:([{}\[\],:])|(\"(?:[\x20\x21\x23-\x5b\x5d-\xfd]|\\[\x20-\xfd])*\")|([a-z]+)(?=[^a-z])"
                  rb"|(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+\-]?[0-9]+)?)(?=[^0-9.eE+\-]))")
STRUCTURAL = {ord("{"): LCURLY, ord("}"): RCURLY, ord("["): LSQUARE, ord("]"): RSQUARE, ord(","): COMMA,
              ord(":"): COLON}
SKIP = {
    START: re.compile(rb"[ \t\r\n]+"),
    RECOVERY: re.compile(rb"[\t\x20-\x2b\x2d-\x39\x3b-\x5a\x5c\x5e-\x7a\x7c\x7e-\xfd]+"),
}


class Message(NamedTuple):
    """One message off the wire: its value, or the error text QEMU answers instead."""

    value: Any
    error: str | None = None
    depth: int = 0  # how deeply it nests (for the recursion budget of whoever handles it)


class JSONStreamer:
    """json_message_parser: bytes in, complete messages out.

    :meth:`feed` returns a :class:`Message` for each message parsed or refused, in
    input order.
    """

    def __init__(self) -> None:
        self.state = START
        self.token = bytearray()
        self.tokens: list[tuple[int, bytes]] = []
        self.token_size = 0
        self.brace = 0
        self.bracket = 0
        self.depth = 0  # the deepest nesting of the message so far
        self.out: list[Message] = []

    @property
    def pending(self) -> int:
        """Bytes held for an unfinished message (0 when between messages)."""
        return self.token_size + len(self.token)

    def feed(self, data: bytes) -> list[Message]:
        table, runs, skip = TABLE, RUNS, SKIP
        token = self.token
        i, n = 0, len(data)
        fast = FAST.match
        while i < n:
            state = self.state
            if state == START:
                m = fast(data, i)
                if m is not None:
                    kind = m.lastindex
                    text = m.group(kind)
                    if len(text) <= MAX_TOKEN_SIZE:
                        i = m.end()
                        if kind == 1:
                            self._token(STRUCTURAL[text[0]], text)
                        elif kind == 2:
                            self._token(STRING, text)
                        elif kind == 3:
                            self._token(KEYWORD_T, text)
                        else:
                            self._token(FLOAT if text.strip(b"-0123456789") else INTEGER, text)
                        continue
            rx = runs.get(state)
            if rx is not None:
                m = rx.match(data, i, min(n, i + MAX_TOKEN_SIZE + 1 - len(token)))
                if m is not None:
                    token += m.group()
                    i = m.end()
                    if len(token) > MAX_TOKEN_SIZE:
                        self._oversize()
                    continue
            else:
                rx = skip.get(state)
                if rx is not None:
                    m = rx.match(data, i)
                    if m is not None:
                        i = m.end()
                        token.clear()
                        continue
            ch = data[i]
            consumed = False
            while not consumed:
                nxt = table[state][ch]
                consumed = not nxt & LOOKAHEAD
                nxt &= ~LOOKAHEAD
                if consumed:
                    token.append(ch)
                    i += 1
                if nxt in TOKENS:
                    self._token(nxt, bytes(token))
                    token.clear()
                    state = START
                elif nxt == START:
                    token.clear()
                    state = START
                elif nxt == ERROR:
                    self._token(ERROR, bytes(token))
                    token.clear()
                    state = RECOVERY
                elif nxt == RECOVERY:
                    token.clear()
                    state = RECOVERY
                else:
                    state = nxt
            self.state = state
            if len(token) > MAX_TOKEN_SIZE:
                self._oversize()
        out, self.out = self.out, []
        return out

    def _oversize(self) -> None:
        """The lexer hands over a token that grew too big (json_lexer_feed_char)."""
        self.token.clear()
        self.state = START
        self._emit(None, "JSON token size limit exceeded")

    def _token(self, kind: int, text: bytes) -> None:
        """json_message_process_token."""
        if kind == LCURLY:
            self.brace += 1
        elif kind == RCURLY:
            self.brace -= 1
        elif kind == LSQUARE:
            self.bracket += 1
        elif kind == RSQUARE:
            self.bracket -= 1
        elif kind == ERROR:
            self._emit(None, f"JSON parse error, stray '{lossy(text)}'")
            return
        if self.token_size + len(text) + 1 > MAX_TOKEN_SIZE:
            self._emit(None, "JSON token size limit exceeded")
            return
        if len(self.tokens) + 1 > MAX_TOKEN_COUNT:
            self._emit(None, "JSON token count limit exceeded")
            return
        if self.bracket + self.brace > MAX_NESTING:
            self._emit(None, "JSON nesting depth limit exceeded")
            return
        self.depth = max(self.depth, self.brace + self.bracket)
        self.tokens.append((kind, text))
        self.token_size += len(text)
        if (self.brace > 0 or self.bracket > 0) and self.brace >= 0 and self.bracket >= 0:
            return
        try:
            value = parse(self.tokens)
        except JSONParseError as err:
            self._emit(None, f"JSON parse error, {err}")
        else:
            self._emit(value, None)

    def _emit(self, value: Any, error: str | None) -> None:
        self.out.append(Message(value, error, self.depth))
        self.brace = self.bracket = self.depth = 0
        self.tokens = []
        self.token_size = 0


# ----------------------------------------------------------------------------- parser


class JSONParseError(Exception):
    """The first error json-parser.c reports (its text, without "JSON parse error, ")."""


_NONCHAR = re.compile("[\ufdd0-\ufdef\ufffe\uffff" + "".join(
    chr(p << 16 | 0xFFFE) + chr(p << 16 | 0xFFFF) for p in range(1, 17)) + "]")
_ESCAPES = {ord('"'): '"', ord("'"): "'", ord("\\"): "\\", ord("/"): "/", ord("b"): "\b", ord("f"): "\f",
            ord("n"): "\n", ord("r"): "\r", ord("t"): "\t"}
_HEX = frozenset(b"0123456789abcdefABCDEF")


def _valid_codepoint(cp: int) -> bool:
    """is_valid_codepoint (util/unicode.c)."""
    return (0 <= cp <= 0x10FFFF and (cp & 0xFFFFF800) != 0xD800 and (cp & 0xFFFE) != 0xFFFE
            and not 0xFDD0 <= cp <= 0xFDEF)


def mod_utf8_codepoint(s: bytes, i: int) -> tuple[int, int]:
    """mod_utf8_codepoint(s + i, 6, &end): the code point there (or -1) and where it ends."""
    if i >= len(s) or s[i] == 0:
        return -1, i
    byte = s[i]
    p = i + 1
    if byte < 0x80:
        return byte, p
    if byte >= 0xFE or not byte & 0x40:
        return -1, p
    length, mask = 0, 0x80
    while byte & mask:
        length += 1
        mask >>= 1
    cp = byte & (mask - 1)
    for _ in range(1, length):
        nxt = s[p] if p < len(s) else 0
        if nxt & 0xC0 != 0x80:
            return -1, p
        p += 1
        cp = cp << 6 | (nxt & 0x3F)
    if not _valid_codepoint(cp) or (cp < (0x80, 0x800, 0x10000, 0x200000, 0x4000000)[length - 2]
                                    and not (cp == 0 and length == 2)):
        return -1, p
    return cp, p


def lossy(raw: bytes) -> str:
    """A C string of modified UTF-8 as QEMU prints it: up to the first NUL, U+FFFD for what
    does not decode (to_json_str)."""
    raw = raw.split(b"\0", 1)[0]
    if raw.isascii():
        return raw.decode("ascii")
    out, i = [], 0
    while i < len(raw):
        cp, i = mod_utf8_codepoint(raw, i)
        out.append(chr(cp) if cp >= 0 else "\ufffd")
    return "".join(out)


def _decode(raw: bytes) -> str | None:
    """Unescaped string bytes as modified UTF-8; None if any sequence is invalid."""
    if raw.isascii():
        return raw.decode("ascii")
    try:
        text = raw.replace(b"\xc0\x80", b"\0").decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if _NONCHAR.search(text) else text


def _cvt4hex(s: bytes, i: int) -> int:
    cp = 0
    for k in range(i, i + 4):
        if k >= len(s) or s[k] not in _HEX:
            return -1
        cp = cp << 4 | int(chr(s[k]), 16)
    return cp


def parse_string(tok: bytes) -> str:
    """parse_string: a string token (quotes included) to its value."""
    body = tok[1:-1]
    if b"\\" not in body and body.isascii():
        return body.decode("ascii")
    out: list[str] = []
    i, end = 1, len(tok) - 1
    while i < end:
        j = tok.find(b"\\", i, end)
        if j < 0:
            j = end
        if j > i:
            text = _decode(tok[i:j])
            if text is None:
                raise JSONParseError("invalid UTF-8 sequence in string")
            out.append(text)
        if j == end:
            break
        c = tok[j + 1]
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
            i = j + 2
            continue
        if c != ord("u"):
            raise JSONParseError("invalid escape sequence in string")
        cp = _cvt4hex(tok, j + 2)
        p = j + 6
        if 0xD800 <= cp <= 0xDBFF and tok[p:p + 2] == b"\\u":
            trailing = _cvt4hex(tok, p + 2)
            if 0xDC00 <= trailing <= 0xDFFF:
                cp = 0x10000 + ((cp & 0x3FF) << 10) | (trailing & 0x3FF)
                p += 6
            else:
                cp = -1
        if not _valid_codepoint(cp):
            raise JSONParseError(f"{lossy(tok[j:p])} is not a valid Unicode character")
        out.append(chr(cp))
        i = p
    return "".join(out)


def _literal(kind: int, text: bytes) -> Any:
    if kind == STRING:
        return parse_string(text)
    if kind == KEYWORD_T:
        if text == b"true":
            return True
        if text == b"false":
            return False
        if text == b"null":
            return None
        raise JSONParseError(f"invalid keyword '{text.decode('ascii')}'"[:1023])  # vsnprintf into 1024 bytes
    if kind == INTEGER and len(text) <= 20:
        value = int(text)
        if -(1 << 63) <= value < 1 << 63 or (text[0] != ord("-") and value < 1 << 64):
            return value
    return float(text)  # strtod: inf beyond the range, 0 below it


_VALUE_START = frozenset((LCURLY, LSQUARE, INTEGER, FLOAT, STRING, KEYWORD_T))


def parse(tokens: list[tuple[int, bytes]]) -> Any:
    """json_parser_parse, without recursion: one message's tokens to a value.

    Raises :class:`JSONParseError` with the first error, as the recursive original
    reports it (each caller's own error is dropped once one is set).
    """
    pos, n = 0, len(tokens)
    # Open containers: [list] or [dict, key or None]; "key" is set while its value is parsed.
    stack: list[list] = []
    while True:
        # parse_value
        if pos >= n:
            raise JSONParseError("premature EOI")
        kind, text = tokens[pos]
        if kind not in _VALUE_START:
            raise JSONParseError("expecting value")
        pos += 1
        if kind == LCURLY or kind == LSQUARE:
            if pos >= n:
                raise JSONParseError("premature EOI")
            closer = RCURLY if kind == LCURLY else RSQUARE
            if tokens[pos][0] != closer:
                stack.append([{}, None] if kind == LCURLY else [[]])
                continue  # parse the first member or element
            pos += 1
            value: Any = {} if kind == LCURLY else []
        else:
            value = _literal(kind, text)
        # Hand the value to its container; close containers as long as they end here.
        while True:
            if not stack:
                return value
            frame = stack[-1]
            container = frame[0]
            if isinstance(container, list):
                container.append(value)
                if pos >= n:
                    raise JSONParseError("premature EOI")
                kind = tokens[pos][0]
                pos += 1
                if kind == RSQUARE:
                    value = stack.pop()[0]
                    continue
                if kind != COMMA:
                    raise JSONParseError("expected separator in list")
                break
            if frame[1] is None:  # value is a key
                if not isinstance(value, str):
                    raise JSONParseError("key is not a string in object")
                if pos >= n:
                    raise JSONParseError("premature EOI")
                kind = tokens[pos][0]
                pos += 1
                if kind != COLON:
                    raise JSONParseError("missing : in object pair")
                frame[1] = value
                break
            key, frame[1] = frame[1], None
            if key in container:
                raise JSONParseError("duplicate key")
            container[key] = value
            if pos >= n:
                raise JSONParseError("premature EOI")
            kind = tokens[pos][0]
            pos += 1
            if kind == RCURLY:
                value = stack.pop()[0]
                continue
            if kind != COMMA:
                raise JSONParseError("expected separator in dict")
            if pos >= n:
                raise JSONParseError("premature EOI")
            break


def loads(data: bytes) -> Any:
    """One complete message, as the monitor would read it (for tests and tools)."""
    results = JSONStreamer().feed(data + b"\n")
    if len(results) != 1:
        raise ValueError(f"expected one message, got {len(results)}")
    if results[0].error is not None:
        raise ValueError(results[0].error)
    return results[0].value


# ----------------------------------------------------------------------------- writer


def qdict_hash(key: str) -> int:
    """tdb_hash over the key's modified UTF-8 (qobject/qdict.c)."""
    raw = key.encode("utf-8").replace(b"\0", b"\xc0\x80")
    value = (0x238F13AF * len(raw)) & 0xFFFFFFFF
    for i, c in enumerate(raw):
        value = (value + (c << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


def qdict_order(obj: Any) -> Any:
    """Every dict (recursively) in the order QEMU walks a QDict built in insertion order."""
    if isinstance(obj, dict):
        keys = list(obj)
        order = sorted(range(len(keys)), key=lambda i: (qdict_hash(keys[i]) % 512, -i))
        return {keys[i]: qdict_order(obj[keys[i]]) for i in order}
    if isinstance(obj, list):
        return [qdict_order(v) for v in obj]
    return obj


_NEEDS_ESCAPE = re.compile(r'[^\x20\x21\x23-\x5b\x5d-\x7e]')
_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match) -> str:
    ch = m.group()
    short = _SHORT.get(ch)
    if short is not None:
        return short
    cp = ord(ch)
    if cp > 0xFFFF:
        cp -= 0x10000
        return f"\\u{0xD800 + (cp >> 10):04X}\\u{0xDC00 + (cp & 0x3FF):04X}"
    return f"\\u{cp:04X}"


def quote(text: str) -> str:
    """to_json_str."""
    return '"' + _NEEDS_ESCAPE.sub(_escape, text) + '"'


def dumps(obj: Any) -> str:
    """qobject_to_json: compact, QEMU's separators and escapes; dicts as given (see
    :func:`qdict_order`)."""
    parts: list[str] = []
    _write(obj, parts)
    return "".join(parts)


def _write(obj: Any, out: list[str]) -> None:
    if isinstance(obj, str):
        out.append(quote(obj))
    elif isinstance(obj, dict):
        out.append("{")
        sep = ""
        for key, value in obj.items():
            out.append(sep)
            out.append(quote(str(key)))
            out.append(": ")
            _write(value, out)
            sep = ", "
        out.append("}")
    elif isinstance(obj, (list, tuple)):
        out.append("[")
        sep = ""
        for value in obj:
            out.append(sep)
            _write(value, out)
            sep = ", "
        out.append("]")
    elif obj is None:
        out.append("null")
    elif obj is True:
        out.append("true")
    elif obj is False:
        out.append("false")
    elif isinstance(obj, float):
        out.append(f"{obj:.17g}")
    elif hasattr(obj, "__index__"):
        out.append(str(obj.__index__()))
    elif hasattr(obj, "__float__"):
        out.append(f"{float(obj):.17g}")
    else:
        raise TypeError(f"not a QObject: {type(obj).__name__}")
