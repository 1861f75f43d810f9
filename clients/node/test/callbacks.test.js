// verifyCallback against a signature made by the gateway's own signing code
// (server/comfyui_grpc/callbacks/signing.py), so both sides agree.

import assert from "node:assert/strict";
import { test } from "node:test";

import { CallbackSignatureError, verifyCallback } from "../src/callbacks.js";

const body = Buffer.from('{"jobId":"j"}');
const header = "t=1700000000,v1=be4f30db2367015d2a6e4849fcf5d157828ac286e4bf9c6441167e2c0d64bcac";

test("a gateway signature verifies, with one secret or during a rotation", () => {
  assert.equal(verifyCallback(body, header, "s3cret", 300, { now: 1700000299 }), true);
  assert.equal(verifyCallback(body, header, ["new", Buffer.from("s3cret")], 300, { now: 1700000000 }), true);
});

test("a changed body, a wrong secret, an old or malformed signature are refused", () => {
  const cases = [
    [Buffer.from('{"jobId":"k"}'), header, "s3cret", 1700000000, "mismatch"],
    [body, header, "other", 1700000000, "mismatch"],
    [body, header, "s3cret", 1700000301, "expired"],
    [body, "v1=abc", "s3cret", 1700000000, "malformed"],
    [body, undefined, "s3cret", 1700000000, "malformed"],
  ];
  for (const [b, h, secret, now, reason] of cases) {
    assert.throws(
      () => verifyCallback(b, h, secret, 300, { now }),
      (error) => error instanceof CallbackSignatureError && error.reason === reason,
    );
  }
});
