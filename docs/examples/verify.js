// Verify a ZenEdge webhook in Node.js (no dependencies).
// Usage: node verify.js SECRET BODY_FILE X_WEBHOOK_SIGNATURE WEBHOOK_ID WEBHOOK_TIMESTAMP WEBHOOK_SIGNATURE
// Prints "valid" and exits 0, or "invalid" and exits 1.
const crypto = require('crypto');
const fs = require('fs');

// A secret written whsec_<base64> is base64-decoded (Standard Webhooks); else its UTF-8 bytes.
function keyOf(secret) {
  return secret.startsWith('whsec_')
    ? Buffer.from(secret.slice(6), 'base64')
    : Buffer.from(secret, 'utf8');
}

function verifyHex(secret, rawBody, header) {
  const expected = crypto.createHmac('sha256', keyOf(secret)).update(rawBody).digest();
  const got = Buffer.from((header || '').trim(), 'hex');
  return got.length === expected.length && crypto.timingSafeEqual(got, expected);
}

function verifyStandard(secret, rawBody, id, ts, header, toleranceSec = 300) {
  if (Math.abs(Date.now() / 1000 - Number(ts)) > toleranceSec) return false; // refuse replays
  const mac = crypto.createHmac('sha256', keyOf(secret))
    .update(`${id}.${ts}.`).update(rawBody).digest();
  // One entry per active ZenEdge secret (rotation); any match is enough.
  return (header || '').split(' ').some((entry) => {
    const [version, sig] = entry.split(',');
    if (version !== 'v1' || !sig) return false;
    const got = Buffer.from(sig, 'base64');
    return got.length === mac.length && crypto.timingSafeEqual(got, mac);
  });
}

const [secret, bodyFile, hexSig, id, ts, v1Sig] = process.argv.slice(2);
const body = fs.readFileSync(bodyFile); // the raw bytes as received, never re-serialised JSON
const ok = verifyHex(secret, body, hexSig) && verifyStandard(secret, body, id, ts, v1Sig);
console.log(ok ? 'valid' : 'invalid');
process.exit(ok ? 0 : 1);
