"""Who is calling: an identity from the caller's certificate (mutual TLS) or from a
per-identity token, and the format of token files.

A token file holds one line per identity, `NAME TOKEN`, or `NAME sha256:HEX` where
only the digest of NAME's token is known (a worker needs the tokens of those who
call it only to check them, and its own only to send it). `#` starts a comment.
Each party sends the token of its own line: a worker the line of its `--name`, the
orchestrator the line of `orchestrator` (or of the identity it is told). A file of
one bare token is the older shared token: whoever holds it is the orchestrator.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field
from pathlib import Path

from splitnn.errors import SecurityError

SHARED = "orchestrator"  # the identity a shared (one-line, nameless) token stands for
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DIGEST = "sha256:"


def digest(token: str) -> bytes:
    """What a worker keeps of a token it only checks."""
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class TokenTable:
    """The identities a token file names: the tokens this party may send, and the
    digests of every token it accepts."""

    tokens: dict[str, str] = field(default_factory=dict)  # name -> token (sendable)
    digests: dict[str, bytes] = field(default_factory=dict)  # name -> sha256(token)
    shared: bool = False

    def token_for(self, name: str) -> str:
        """The token `name` sends; SecurityError when the file has none for it."""
        if self.shared:
            return self.tokens[SHARED]
        if name not in self.tokens:
            known = "only a digest" if name in self.digests else "no line"
            raise SecurityError(f"the token file has {known} for {name!r}: it cannot call")
        return self.tokens[name]

    def identify(self, token: str) -> str | None:
        """The identity whose token this is, or None. Compares every digest in
        constant time, so the answer's timing says nothing of the tokens."""
        presented, found = digest(token), None
        for name, expected in self.digests.items():
            if hmac.compare_digest(presented, expected):
                found = name
        return found


def parse_tokens(text: str, where: str = "token file") -> TokenTable:
    """A TokenTable from a token file's text."""
    lines = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append((number, line.split()))
    if not lines:
        raise SecurityError(f"{where} is empty")
    if len(lines) == 1 and len(lines[0][1]) == 1:  # the older shared token
        token = _check_token(lines[0][1][0], where, lines[0][0], min_length=1)
        return TokenTable({SHARED: token}, {SHARED: digest(token)}, shared=True)
    tokens: dict[str, str] = {}
    digests: dict[str, bytes] = {}
    for number, words in lines:
        if len(words) != 2:
            raise SecurityError(f"{where} line {number}: expected NAME TOKEN")
        name, secret = words
        if not _NAME.match(name):
            raise SecurityError(f"{where} line {number}: {name!r} is not an identity name")
        if name in digests:
            raise SecurityError(f"{where} line {number}: {name!r} appears twice")
        if secret.startswith(_DIGEST):
            try:
                digests[name] = bytes.fromhex(secret[len(_DIGEST) :])
            except ValueError:
                raise SecurityError(f"{where} line {number}: bad sha256 digest") from None
            if len(digests[name]) != 32:
                raise SecurityError(f"{where} line {number}: a sha256 digest has 64 hex digits")
        else:
            tokens[name] = _check_token(secret, where, number)
            digests[name] = digest(tokens[name])
    if len(set(digests.values())) != len(digests):
        raise SecurityError(f"{where}: two identities share a token")
    return TokenTable(tokens, digests)


def read_tokens(path: Path | str) -> TokenTable:
    """The TokenTable in a token file."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise SecurityError(f"cannot read token file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise SecurityError(f"token file {path} is not text") from None
    return parse_tokens(text, f"token file {path}")


def _check_token(token: str, where: str, number: int, min_length: int = 16) -> str:
    if len(token) < min_length or not token.isprintable():
        raise SecurityError(
            f"{where} line {number}: a token has at least {min_length} printable characters"
        )
    return token


def certificate_identity(auth_context: dict) -> str | None:
    """The identity a verified client certificate names: its common name."""
    names = auth_context.get("x509_common_name") or []
    if len(names) != 1:
        return None
    name = names[0].decode("utf-8", "replace") if isinstance(names[0], bytes) else names[0]
    return name if _NAME.match(name) else None
