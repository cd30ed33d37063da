#!/usr/bin/env python3
"""An independent checker of stepgate's audit proofs, written from RFC 9162, RFC 8785 and
RFC 8032 rather than from stepgate's code: it shares nothing with the Rust implementation.

usage: audit_proof_check.py PUBLIC_KEY_PEM PROOF_JSON
Prints "valid: ..." and exits 0, or prints "invalid: ..." and exits 1.
"""

import base64
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import load_pem_public_key


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def canonical(value) -> bytes:
    """RFC 8785 for what checkpoints hold (strings and integers)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_id(public_key) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def open_checkpoint(signed, public_key) -> dict:
    body = signed["body"].encode()
    checkpoint = json.loads(body)
    if canonical(checkpoint) != body:
        raise ValueError("checkpoint is not canonical JSON")
    if checkpoint.get("type") != "checkpoint":
        raise ValueError("not a checkpoint")
    if checkpoint["kid"] != key_id(public_key):
        raise ValueError("checkpoint signed by another key")
    public_key.verify(base64.b64decode(signed["signature"]), body)
    return checkpoint


def root_from_inclusion(index: int, size: int, leaf: bytes, path) -> bytes:
    """RFC 9162 section 2.1.3.2."""
    if index >= size:
        raise ValueError("leaf_index beyond tree_size")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise ValueError("audit path too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("audit path too short")
    return r


def consistent(first: int, second: int, first_root: bytes, second_root: bytes, path) -> bool:
    """RFC 9162 section 2.1.4.2."""
    if first == second:
        return not path and first_root == second_root
    if first & (first - 1) == 0:
        path = [first_root] + path
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


def check(public_key, proof) -> str:
    if proof["type"] == "inclusion":
        checkpoint = open_checkpoint(proof["checkpoint"], public_key)
        body = proof["record"]["body"].encode()
        record = json.loads(body)
        if record["seq"] != proof["leaf_index"] + 1 or checkpoint["size"] != proof["tree_size"]:
            raise ValueError("proof fields disagree")
        # Only the last record of each append is signed; the others are covered by the chain.
        if record["kid"] == key_id(public_key) and proof["record"]["signature"]:
            public_key.verify(base64.b64decode(proof["record"]["signature"]), body)
        path = [bytes.fromhex(h) for h in proof["audit_path"]]
        root = root_from_inclusion(proof["leaf_index"], proof["tree_size"], leaf_hash(body), path)
        if root.hex() != checkpoint["root"]:
            raise ValueError("audit path does not lead to the checkpoint root")
        return f"record {record['seq']} ({record['event']}) is in the {checkpoint['size']}-record trail"
    if proof["type"] == "consistency":
        old = open_checkpoint(proof["old"], public_key)
        new = open_checkpoint(proof["new"], public_key)
        path = [bytes.fromhex(h) for h in proof["path"]]
        if not consistent(old["size"], new["size"], bytes.fromhex(old["root"]), bytes.fromhex(new["root"]), path):
            raise ValueError("not consistent")
        return f"the {old['size']}-record trail is a prefix of the {new['size']}-record trail"
    raise ValueError("unknown proof type")


def main() -> int:
    with open(sys.argv[1], "rb") as f:
        public_key = load_pem_public_key(f.read())
    with open(sys.argv[2]) as f:
        proof = json.load(f)
    try:
        print("valid:", check(public_key, proof))
        return 0
    except (ValueError, KeyError, IndexError, InvalidSignature) as e:
        print("invalid:", repr(e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
