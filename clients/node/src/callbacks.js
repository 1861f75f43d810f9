// Checking a completion callback's signature in a receiver.
//
// The gateway POSTs a finished job to GenerateRequest.callback.url with
//   X-ComfyUI-GRPC-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>
//   X-ComfyUI-GRPC-Delivery:  unique, the same on every retry (deduplicate on it)
//   X-ComfyUI-GRPC-Job:       the job id
// Verify the raw body (a Buffer, before JSON.parse) with the secret from the
// gateway's --callback-secret-file; during a rotation pass [newSecret, oldSecret].

import { createHmac, timingSafeEqual } from "node:crypto";

export const SIGNATURE_HEADER = "x-comfyui-grpc-signature";
export const DELIVERY_HEADER = "x-comfyui-grpc-delivery";
export const JOB_HEADER = "x-comfyui-grpc-job";

/** Not from the gateway, or too old. `reason`: "malformed", "expired" or "mismatch". */
export class CallbackSignatureError extends Error {
  constructor(reason, message) {
    super(message);
    this.name = "CallbackSignatureError";
    this.reason = reason;
  }
}

function parse(header) {
  let timestamp = null;
  const signatures = [];
  for (const part of String(header ?? "").split(",")) {
    const at = part.indexOf("=");
    if (at < 0) continue;
    const key = part.slice(0, at).trim();
    const value = part.slice(at + 1).trim();
    if (key === "t" && /^\d+$/.test(value)) timestamp = Number(value);
    else if (key === "v1") signatures.push(value);
  }
  if (timestamp === null || signatures.length === 0) {
    throw new CallbackSignatureError("malformed", "the signature must be 't=<unix seconds>,v1=<hex>'");
  }
  return { timestamp, signatures };
}

/**
 * True when `header` signs `body` with `secret` (a string, Buffer, or an
 * array of them) within `tolerance` seconds of now; throws
 * CallbackSignatureError otherwise.
 */
export function verifyCallback(body, header, secret, tolerance = 300, { now } = {}) {
  const { timestamp, signatures } = parse(header);
  const current = now ?? Date.now() / 1000;
  const age = Math.abs(current - timestamp);
  if (age > tolerance) {
    throw new CallbackSignatureError("expired", `the signature is ${Math.round(age)} s old (tolerance ${tolerance} s)`);
  }
  const payload = Buffer.concat([Buffer.from(`${timestamp}.`), Buffer.from(body)]);
  for (const key of Array.isArray(secret) ? secret : [secret]) {
    const expected = Buffer.from(createHmac("sha256", key).update(payload).digest("hex"));
    for (const candidate of signatures) {
      const given = Buffer.from(candidate);
      if (given.length === expected.length && timingSafeEqual(given, expected)) return true;
    }
  }
  throw new CallbackSignatureError("mismatch", "the signature does not match the body");
}
