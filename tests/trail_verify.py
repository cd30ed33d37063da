#!/usr/bin/env python3
"""An independent verifier of stepgate's audit trail, written from docs/trail-format.md alone
(with RFC 8785, RFC 9162 and RFC 8032). It shares no code with stepgate, whose source was not read.

usage: trail_verify.py [--files DIR] [--redis-dump FILE] --public-key PEM [--public-key PEM ...] [--since FILE]
--redis-dump is a JSON file standing in for Redis: {"log": [{"body", "sig"}...], "checkpoints": [...],
"head": {...}, "trimmed": {...}}. Prints one line of JSON; exits 0 ok, 1 content, 2 usage, 3 unreadable,
4 truncated, 5 unknown or retired key (§9).
"""

import argparse
import base64
import binascii
import functools
import hashlib
import json
import os
import re
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

GENESIS = "0" * 64
EXIT = {"usage": 2, "unreadable": 3, "truncated": 4, "unknown_key": 5, "retired_key": 5}  # others: 1
HEX64 = re.compile(r"[0-9a-fA-F]{64}")
DECIMAL = re.compile(r"[0-9]+")
RECORDS_FILE = re.compile(r"audit-([0-9]+)\.jsonl")


class Failure(Exception):
    """Failure(kind, seq, detail): the first problem found; verification stops there."""


# ---------------------------------------------------------------- RFC 8785 (JCS)

def parse_json(data):
    """Strict JSON: UTF-8 only, no NaN/Infinity literals. Raises on anything else."""
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    return json.loads(data, parse_constant=lambda name: float(f"{name} is not JSON"))  # raises


def es_number(x: float) -> str:
    """ECMAScript Number::toString for a finite double (RFC 8785 §3.2.2.3)."""
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError("NaN and infinities are not JSON")
    if x == 0:
        return "0"  # also -0
    sign = "-" if x < 0 else ""
    mantissa, _, exp = repr(abs(x)).partition("e")  # repr is the shortest round-trip form
    whole, _, frac = mantissa.partition(".")
    digits = whole + frac
    n = len(whole) + int(exp or 0)  # value = 0.<digits> * 10**n
    stripped = digits.lstrip("0")
    n -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    exponent = "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return sign + digits[0] + ("." + digits[1:] if k > 1 else "") + exponent


_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_ESCAPED = re.compile(r'["\\\x00-\x1f]')


def jcs_string(s: str) -> str:
    """Escape only '"', '\\' and U+0000-U+001F; everything else stays raw."""
    return '"' + _ESCAPED.sub(lambda m: _SHORT.get(m.group(), "\\u%04x" % ord(m.group())), s) + '"'


def jcs(value) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (int, float)):
        return es_number(float(value))  # every number is an IEEE-754 double
    if isinstance(value, str):
        return jcs_string(value)
    if isinstance(value, list):
        return "[" + ",".join(jcs(v) for v in value) + "]"
    if isinstance(value, dict):
        names = sorted(value, key=lambda name: name.encode("utf-16-be", "surrogatepass"))
        return "{" + ",".join(jcs_string(k) + ":" + jcs(value[k]) for k in names) + "}"
    raise TypeError(f"not JSON: {type(value).__name__}")


def canonical(value) -> bytes:
    return jcs(value).encode("utf-8")  # a lone surrogate raises UnicodeEncodeError


def parse_canonical(body: bytes):
    """The parsed body if `body` is JSON and exactly its own JCS form, else None."""
    try:
        value = parse_json(body)
        return value if canonical(value) == body else None
    except Exception:  # decode, syntax, overflow, recursion, surrogates
        return None


# ---------------------------------------------------------------- keys, hashes, Merkle tree

def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def key_id(raw: bytes) -> str:
    """First 16 hex digits of SHA-256 over the 32 raw public-key bytes."""
    return hashlib.sha256(raw).hexdigest()[:16]


def b64(text):
    """Strict RFC 4648 §4 base64 (padding required, canonical trailing bits), or None."""
    if not isinstance(text, str):
        return None
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    return raw if base64.b64encode(raw).decode() == text else None


def verifies(key, sig: bytes, body: bytes) -> bool:
    try:
        key.verify(sig, body)
        return True
    except InvalidSignature:
        return False


_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P


def decode_point(raw: bytes):
    """RFC 8032 §5.1.3 point decoding, canonical only (y < p): (x, y), or None."""
    y = int.from_bytes(raw, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * pow(2, (_P - 1) // 4, _P) % _P
        if (x * x - x2) % _P:
            return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _add(a, b):
    """Twisted Edwards addition (a = -1), affine."""
    (x1, y1), (x2, y2) = a, b
    t = _D * x1 * x2 * y1 * y2 % _P
    x3 = (x1 * y2 + y1 * x2) * pow(1 + t, _P - 2, _P) % _P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, _P - 2, _P) % _P
    return x3, y3


def valid_point(raw: bytes) -> bool:
    """A strong key (trail format §3): canonically encoded, and not of small order (8·P is
    not the identity), under which no fixed signature verifies every message."""
    point = decode_point(raw)
    if point is None:
        return False
    for _ in range(3):
        point = _add(point, point)
    return point != (0, 1)


def leaf_hash(body: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + body).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def frontier_push(frontier: list, size: int, leaf: bytes) -> None:
    frontier.append(leaf)
    while size & 1:
        right, left = frontier.pop(), frontier.pop()
        frontier.append(node_hash(left, right))
        size >>= 1


def frontier_root(frontier: list) -> bytes:
    """Fold from the right: r = last; r = node(s, r) for each earlier s. MTH(empty) = SHA-256("")."""
    if not frontier:
        return hashlib.sha256(b"").digest()
    return functools.reduce(lambda root, s: node_hash(s, root), reversed(frontier[:-1]), frontier[-1])


def decode_frontier(text):
    """'<n>:<hex>,<hex>,...' -> (n, [bytes]) or None."""
    n, sep, rest = text.partition(":") if isinstance(text, str) else ("", "", "")
    if not sep or not DECIMAL.fullmatch(n) or int(n) >= 2**64:
        return None
    parts = rest.split(",") if rest else []
    if len(parts) != bin(int(n)).count("1") or not all(HEX64.fullmatch(p) for p in parts):
        return None
    return int(n), [bytes.fromhex(p) for p in parts]


CHECKPOINT_MEMBERS = {"head": str, "kid": str, "root": str, "size": int, "time": str, "type": str, "v": int}


def parse_checkpoint(body: bytes):
    """The checkpoint object if the body is JSON with all 7 members of the right types."""
    try:
        cp = parse_json(body)
    except Exception:
        return None
    ok = isinstance(cp, dict) and all(isinstance(cp.get(name), kind) and not isinstance(cp[name], bool)
                                      and (kind is str or 0 <= cp[name] < 2**64)
                                      for name, kind in CHECKPOINT_MEMBERS.items())
    return cp if ok else None


# ---------------------------------------------------------------- sources

def line_entry(line: str, member: str):
    """(body bytes, sig) of one exported line; (b"", "") if it is not a well-formed line."""
    try:
        obj = parse_json(line)
        if isinstance(obj, dict) and member in obj and isinstance(obj.get("sig"), str):
            value = obj[member]  # a Redis body that was not JSON is exported as a string: take it as is
            body = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else canonical(value)
            return body, obj["sig"]
    except Exception:
        pass
    return b"", ""


def file_lines(path: str):
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise Failure("unreadable", None, f"{path}: {e}")
    lines = text.split("\n")
    lines.pop()  # "" after a final "\n", else a last line still being written (skipped)
    return lines


def read_files(directory: str):
    try:
        names = os.listdir(directory)
    except OSError as e:
        raise Failure("unreadable", None, f"{directory}: {e}")
    numbered = sorted((int(m.group(1)), name) for name in names
                      if (m := RECORDS_FILE.fullmatch(name)) and int(m.group(1)) < 2**64)
    records = [(*line_entry(line, "record"), f"{name} line {i}") for _, name in numbered
               for i, line in enumerate(file_lines(os.path.join(directory, name)), 1)]
    path = os.path.join(directory, "checkpoints.jsonl")  # absent: no checkpoints yet
    lines = file_lines(path) if os.path.exists(path) else []
    checkpoints = [(*line_entry(line, "checkpoint"), f"checkpoints.jsonl line {i}") for i, line in enumerate(lines, 1)]
    return records, checkpoints


def read_dump(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            dump = json.load(f)
        log, cps = ([(str(e.get("body", "")).encode("utf-8", "surrogatepass"), str(e.get("sig", "")),
                      f"{name} stream entry {i}") for i, e in enumerate(dump.get(name, []), 1)]
                    for name in ("log", "checkpoints"))
        head = {k: str(v) for k, v in (dump.get("head") or {}).items()}
        marker = {k: str(v) for k, v in (dump.get("trimmed") or {}).items()}
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise Failure("unreadable", None, f"redis dump {path}: {e}")
    seq = head.get("seq", "0")  # no head: an empty trail, seq 0 with the genesis hash
    if not DECIMAL.fullmatch(seq):
        raise Failure("unreadable", None, f"head seq {seq!r} is not a decimal")
    return log, cps, (int(seq), head.get("hash", GENESIS)), marker


def marker_start(marker: dict):
    """(seq0, hash0, (n, frontier0), kid0) from a trim marker, or None if it is to be ignored."""
    seq, frontier = marker.get("seq", ""), decode_frontier(marker.get("frontier"))
    if not DECIMAL.fullmatch(seq) or int(seq) == 0 or "hash" not in marker or frontier is None:
        return None
    return int(seq), marker["hash"], frontier, marker.get("kid") or None


def join(file_records, redis_records):
    """§6.3 "both": files are records 1..F; Redis must agree on those and extends them."""
    joined, count = list(file_records), len(file_records)
    for body, sig, loc in redis_records:
        try:
            seq = parse_json(body).get("seq")
        except Exception:
            seq = None  # its seq cannot be read: appended
        if is_int(seq) and 1 <= seq <= count:
            fbody, fsig, floc = file_records[seq - 1]
            if (fbody, fsig) != (body, sig):
                raise Failure("diverged", seq, f"{loc} differs from {floc}")
        else:
            joined.append((body, sig, loc))
    return joined


# ---------------------------------------------------------------- §9

class Verifier:
    def __init__(self, anchors: dict, start, since):
        self.keys, self.retired = dict(anchors), {}
        self.seq0, self.hash0, (self.n0, frontier0), self.kid0 = start
        self.active = self.kid0
        self.seq, self.prev, self.frontier = self.seq0, self.hash0, list(frontier0)
        self.since, self.since_checked, self.started = since, False, False
        self.unsigned_from, self.checked, self.rotations = None, 0, 0
        self.pending, self.start_cps = {}, []

    def open(self, cp, body, sig, allowed) -> bool:
        raw = b64(sig)
        if (parse_canonical(body) is None or cp["v"] != 1 or cp["type"] != "checkpoint"
                or not HEX64.fullmatch(cp["root"]) or cp["kid"] not in self.keys
                or (allowed is not None and cp["kid"] != allowed) or raw is None or len(raw) != 64):
            return False
        return verifies(self.keys[cp["kid"]], raw, body)

    def matches(self, cp) -> bool:
        return bytes.fromhex(cp["root"]) == frontier_root(self.frontier) and cp["head"] == self.prev

    def check_since(self):
        cp, body, sig, loc = self.since
        if not (self.open(cp, body, sig, self.active) and self.matches(cp)):
            raise Failure("inconsistent", cp["size"], f"{loc} does not match the trail at size {cp['size']}")
        self.since_checked = True

    def check_start(self):
        if self.started or self.seq0 == 0:
            return
        self.started = True
        good = [c for c in self.start_cps
                if self.n0 == self.seq0 and self.open(c[0], c[1], c[2], self.kid0) and self.matches(c[0])]
        if not good:
            raise Failure("checkpoint_mismatch", self.seq0,
                          f"the trim marker (seq {self.seq0}) is not vouched for by a signed checkpoint")
        self.checked += sum(1 for c in good if c is not self.since)

    def fail(self, kind, detail, loc):
        raise Failure(kind, self.seq + 1, f"{loc}: {detail}")

    def record(self, body: bytes, sig: str, loc: str):
        obj = parse_canonical(body)
        if obj is None:
            self.fail("malformed", "body is not canonical JSON (RFC 8785)", loc)
        if not isinstance(obj, dict) or not is_int(obj.get("v")) or obj["v"] not in (1, 2, 3, 4):
            self.fail("malformed", "not a record of schema v1-v4", loc)
        kid = obj["kid"] if isinstance(obj.get("kid"), str) else ""
        if kid in self.retired:
            self.fail("retired_key", f"kid {kid} was retired at seq {self.retired[kid]}", loc)
        if kid not in self.keys:
            self.fail("unknown_key", f"kid {kid!r} is not a known key", loc)
        if self.active is not None and kid != self.active:
            self.fail("unknown_key", f"kid {kid} is not the active key {self.active}", loc)
        if not is_int(obj.get("seq")) or obj["seq"] != self.seq + 1:
            self.fail("sequence", f"seq {obj.get('seq')!r}, expected {self.seq + 1}", loc)
        if obj.get("prev") != self.prev:
            self.fail("chain_broken", f"prev does not match the hash of record {self.seq}", loc)
        rotated = obj.get("event") == "key_rotated"
        if sig == "":
            if rotated:
                self.fail("malformed", "a key_rotated record must be signed", loc)
            self.unsigned_from = self.unsigned_from or self.seq + 1
        else:
            raw = b64(sig)
            if raw is None or len(raw) != 64:
                self.fail("modified", "sig is not base64 of 64 bytes", loc)
            if not verifies(self.keys[kid], raw, body):
                self.fail("modified", f"signature does not verify with key {kid}", loc)
            self.unsigned_from = None
        if rotated:
            pk, new_kid = b64(obj.get("public_key")), obj.get("new_kid")
            if pk is None or len(pk) != 32 or not valid_point(pk) or key_id(pk) != new_kid or new_kid == kid:
                self.fail("malformed", "key_rotated does not carry a valid new key", loc)
            self.keys[new_kid] = Ed25519PublicKey.from_public_bytes(pk)
            self.retired[kid] = self.seq + 1
            self.active = new_kid
            self.rotations += 1
        else:
            self.active = kid
        frontier_push(self.frontier, self.seq, leaf_hash(body))
        self.seq, self.prev = self.seq + 1, hashlib.sha256(body).hexdigest()
        if self.since and self.since[0]["size"] == self.seq:
            self.check_since()
        for cp, cbody, csig, cloc in self.pending.pop(self.seq, []):
            if not self.open(cp, cbody, csig, self.active):
                raise Failure("checkpoint_invalid", self.seq, f"{cloc}: does not open with key {self.active}")
            if not self.matches(cp):
                raise Failure("checkpoint_mismatch", self.seq, f"{cloc}: root or head differs from the trail")
            self.checked += 1

    def run(self, records, checkpoints, head):
        for body, sig, loc in checkpoints:
            cp = parse_checkpoint(body)
            if cp is None:
                raise Failure("checkpoint_invalid", None, f"{loc}: not a checkpoint")
            if cp["size"] > self.seq0:
                self.pending.setdefault(cp["size"], []).append((cp, body, sig, loc))
            elif cp["size"] == self.seq0:
                self.start_cps.append((cp, body, sig, loc))
        size = self.since[0]["size"] if self.since else None
        if size is not None and size < self.seq0:
            raise Failure("inconsistent", size, f"--since size {size} is before the trim point {self.seq0}")
        if size == self.seq0:
            self.start_cps.append(self.since)
            self.check_since()
        for body, sig, loc in records:
            self.check_start()
            self.record(body, sig, loc)
        self.check_start()
        if self.since and not self.since_checked:
            size = self.since[0]["size"]
            raise Failure("inconsistent", size, f"--since covers {size} records, the trail ends at {self.seq}")
        if self.pending:
            first = min(self.pending)
            raise Failure("truncated", first, f"a checkpoint covers {first} records, the trail ends at {self.seq}")
        if self.unsigned_from:
            raise Failure("truncated", self.unsigned_from,
                          f"records {self.unsigned_from}..{self.seq} are unsigned and no signed record follows")
        if head and (head[0] != self.seq or head[1] != self.prev):
            raise Failure("truncated", head[0], f"head is {head}, the records end at {(self.seq, self.prev)}")
        return {"ok": True, "records": self.seq - self.seq0, "last_seq": self.seq,
                "checkpoints": self.checked, "rotations": self.rotations}


# ---------------------------------------------------------------- command line

def load_anchors(paths):
    keys = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                key = load_pem_public_key(f.read())
        except (OSError, ValueError, TypeError) as e:
            raise Failure("usage", None, f"public key {path}: {e}")
        if not isinstance(key, Ed25519PublicKey):
            raise Failure("usage", None, f"public key {path} is not Ed25519")
        raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        if not valid_point(raw):
            raise Failure("usage", None, f"public key {path} is a weak or non-canonical point")
        keys[key_id(raw)] = key
    return keys


def load_since(path):
    try:
        with open(path, "rb") as f:
            line = parse_json(f.read().decode("utf-8").strip())
        body = canonical(line["checkpoint"])
        cp, sig = parse_checkpoint(body), line["sig"]
    except Exception as e:
        raise Failure("usage", None, f"--since {path} is not a checkpoint line: {e!r}")
    if cp is None or not isinstance(sig, str):
        raise Failure("usage", None, f"--since {path} is not a checkpoint line")
    return cp, body, sig, f"--since {path}"


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise Failure("usage", None, message)


def main(argv) -> dict:
    parser = Parser(description="Verify a stepgate audit trail (docs/trail-format.md).")
    parser.add_argument("--files", metavar="DIR")
    parser.add_argument("--redis-dump", metavar="FILE")
    parser.add_argument("--public-key", metavar="PEM", action="append", required=True)
    parser.add_argument("--since", metavar="FILE")
    args = parser.parse_args(argv)
    if not args.files and not args.redis_dump:
        raise Failure("usage", None, "give --files DIR, --redis-dump FILE, or both")
    anchors = load_anchors(args.public_key)
    since = load_since(args.since) if args.since else None

    start, head = (0, GENESIS, (0, []), None), None
    if args.redis_dump:
        log, redis_cps, head, marker = read_dump(args.redis_dump)
    if args.files:
        records, checkpoints = read_files(args.files)
        if args.redis_dump:  # both: join, marker unused, start at genesis, head from Redis
            records = join(records, log)
            seen = set()
            checkpoints = [c for c in checkpoints + redis_cps if not (c[:2] in seen or seen.add(c[:2]))]
    else:  # Redis alone: start at a usable trim marker
        records, checkpoints = log, redis_cps
        start = marker_start(marker) or start
    return Verifier(anchors, start, since).run(records, checkpoints, head)


if __name__ == "__main__":
    try:
        result, code = main(sys.argv[1:]), 0
    except Failure as f:
        result = dict(zip(("ok", "kind", "seq", "detail"), (False, *f.args)))
        code = EXIT.get(f.args[0], 1)
    print(json.dumps(result))
    sys.exit(code)
