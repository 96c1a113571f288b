"""Verify a ZenEdge webhook in Python (standard library only).

Usage: python3 verify.py SECRET BODY_FILE X_WEBHOOK_SIGNATURE WEBHOOK_ID WEBHOOK_TIMESTAMP WEBHOOK_SIGNATURE
Prints "valid" and exits 0, or "invalid" and exits 1.
"""
import base64
import hashlib
import hmac
import sys
import time


def key_of(secret: str) -> bytes:
    # A secret written whsec_<base64> is base64-decoded (Standard Webhooks); else its UTF-8 bytes.
    return base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()


def verify_hex(secret: str, raw_body: bytes, header: str) -> bool:
    expected = hmac.new(key_of(secret), raw_body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, (header or "").strip().lower())


def verify_standard(secret: str, raw_body: bytes, msg_id: str, ts: str, header: str,
                    tolerance: int = 300) -> bool:
    if abs(time.time() - int(ts)) > tolerance:
        return False  # stale or from the future: refuse replays
    mac = hmac.new(key_of(secret), f"{msg_id}.{ts}.".encode() + raw_body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(mac).decode()
    # One entry per active ZenEdge secret (rotation); any match is enough.
    return any(hmac.compare_digest(expected, entry) for entry in (header or "").split())


if __name__ == "__main__":
    secret, body_file, hex_sig, msg_id, ts, v1_sig = sys.argv[1:7]
    with open(body_file, "rb") as f:
        body = f.read()  # the raw bytes as received, never re-serialised JSON
    ok = verify_hex(secret, body, hex_sig) and verify_standard(secret, body, msg_id, ts, v1_sig)
    print("valid" if ok else "invalid")
    sys.exit(0 if ok else 1)
