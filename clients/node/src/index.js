// Node.js client for the comfyui-grpc gateway.
//
// Loads the service from the repository's .proto files at run time (no code
// generation step), and adds what every caller would otherwise rewrite:
// idempotent retries of Generate, progress streams that resume after a
// dropped connection, and errors that carry the gateway's reason and field
// violations.

import { createHash, randomUUID } from "node:crypto";
import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

/** Codes meaning the gateway did not answer: the call is made again. */
const RETRIED = new Set([grpc.status.UNAVAILABLE, grpc.status.CANCELLED]);

export { jobFileName, safeName, saveNew } from "./files.js";
export {
  CallbackSignatureError,
  DELIVERY_HEADER,
  JOB_HEADER,
  SIGNATURE_HEADER,
  verifyCallback,
} from "./callbacks.js";

const here = path.dirname(fileURLToPath(import.meta.url));

/** Where the service's .proto files live: the repository's `protos/` folder. */
export const DEFAULT_PROTOS_DIR =
  process.env.COMFYUI_GRPC_PROTOS ?? path.resolve(here, "..", "..", "..", "protos");
export const DEFAULT_TARGET = "localhost:50051";
export const TERMINAL_EVENTS = new Set(["succeeded", "failed", "cancelled"]);
export const TERMINAL_STATES = new Set([
  "JOB_STATE_SUCCEEDED",
  "JOB_STATE_FAILED",
  "JOB_STATE_CANCELLED",
]);

const LOADER_OPTIONS = {
  keepCase: true, // field names exactly as in the .proto files
  longs: String, // int64/uint64 (seeds, sizes) without precision loss
  enums: String, // "JOB_STATE_RUNNING" rather than 2
  defaults: true,
  oneofs: true, // `event.event` names the set oneof field
};

/**
 * Load `comfyui_grpc.v1` from .proto files.
 * @param {string} [protosDir]
 */
export function loadProtos(protosDir = DEFAULT_PROTOS_DIR) {
  const definition = protoLoader.loadSync("comfyui_grpc/v1/generation_service.proto", {
    ...LOADER_OPTIONS,
    includeDirs: [protosDir],
  });
  return grpc.loadPackageDefinition(definition).comfyui_grpc.v1;
}

// -- errors -------------------------------------------------------------------

const errorModel = new protobuf.Root().loadSync(
  path.join(here, "..", "protos", "google", "rpc", "error_model.proto"),
  { keepCase: true },
);
const StatusProto = errorModel.lookupType("google.rpc.Status");
const DETAIL_TYPES = Object.fromEntries(
  ["ErrorInfo", "BadRequest", "RetryInfo"].map((name) => [
    `google.rpc.${name}`,
    errorModel.lookupType(`google.rpc.${name}`),
  ]),
);
const CODE_NAMES = Object.fromEntries(
  Object.entries(grpc.status).map(([name, value]) => [value, name]),
);

/** A call the gateway (or the network) refused, with the gateway's details. */
export class GatewayError extends Error {
  /** @param {import("@grpc/grpc-js").ServiceError} error */
  constructor(error) {
    const codeName = CODE_NAMES[error.code] ?? "UNKNOWN";
    super(`${codeName}: ${error.details || error.message}`);
    this.name = "GatewayError";
    this.code = error.code;
    this.codeName = codeName;
    this.details = error.details;
    this.reason = "";
    this.domain = "";
    /** @type {{field: string, description: string}[]} */
    this.violations = [];
    /** @type {number | null} */
    this.retryDelaySeconds = null;
    const raw = error.metadata?.get("grpc-status-details-bin") ?? [];
    if (raw.length > 0) {
      this.#readStatus(raw[0]);
    }
    if (this.violations.length > 0) {
      this.message += ` [${this.violations.map((v) => `${v.field}: ${v.description}`).join("; ")}]`;
    }
  }

  #readStatus(bytes) {
    let status;
    try {
      status = StatusProto.decode(bytes);
    } catch {
      return; // a malformed trailer must not hide the real error
    }
    for (const detail of status.details) {
      const typeName = detail.type_url.slice(detail.type_url.lastIndexOf("/") + 1);
      const type = DETAIL_TYPES[typeName];
      if (!type) continue;
      const message = type.toObject(type.decode(detail.value), { longs: Number, defaults: true });
      if (typeName === "google.rpc.ErrorInfo") {
        this.reason = message.reason;
        this.domain = message.domain;
      } else if (typeName === "google.rpc.BadRequest") {
        this.violations.push(...message.field_violations);
      } else if (typeName === "google.rpc.RetryInfo" && message.retry_delay) {
        this.retryDelaySeconds = message.retry_delay.seconds + message.retry_delay.nanos / 1e9;
      }
    }
  }
}

/** The job ran and did not succeed (FAILED or CANCELLED): `job` says why. */
export class JobError extends Error {
  constructor(job) {
    const why = job.error?.reason ? `: ${job.error.reason}: ${job.error.message}` : "";
    super(`job ${job.job_id} ended ${job.state}${why}`);
    this.name = "JobError";
    this.job = job;
  }
}

// -- client -------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function seconds(value) {
  const whole = Math.floor(value);
  return { seconds: String(whole), nanos: Math.round((value - whole) * 1e9) };
}

export class ComfyUIGrpcClient {
  /**
   * @param {object} [options]
   * @param {string} [options.target] HOST:PORT; default COMFYUI_GRPC_TARGET or localhost:50051
   * @param {string} [options.token] bearer token; default COMFYUI_GRPC_TOKEN
   * @param {boolean} [options.tls] use TLS (system roots unless caCert is given)
   * @param {Buffer} [options.caCert] PEM root certificates
   * @param {Buffer} [options.clientCert] PEM client certificate (mutual TLS)
   * @param {Buffer} [options.clientKey] PEM key of clientCert
   * @param {number} [options.timeoutSeconds] deadline of each unary call (default 30)
   * @param {number} [options.maxAttempts] tries for calls that fail UNAVAILABLE or CANCELLED (default 5)
   * @param {string} [options.protosDir] where comfyui_grpc/v1/*.proto live
   */
  constructor(options = {}) {
    this.target = options.target ?? process.env.COMFYUI_GRPC_TARGET ?? DEFAULT_TARGET;
    this.token = options.token ?? process.env.COMFYUI_GRPC_TOKEN ?? "";
    this.timeoutSeconds = options.timeoutSeconds ?? 30;
    this.maxAttempts = options.maxAttempts ?? 5;
    const useTls = options.tls || options.caCert || options.clientCert;
    const credentials = useTls
      ? grpc.credentials.createSsl(
          options.caCert ?? null,
          options.clientKey ?? null,
          options.clientCert ?? null,
        )
      : grpc.credentials.createInsecure();
    const v1 = loadProtos(options.protosDir);
    this.stub = new v1.GenerationService(this.target, credentials);
  }

  close() {
    this.stub.close();
  }

  #metadata() {
    const metadata = new grpc.Metadata();
    if (this.token) metadata.set("authorization", `Bearer ${this.token}`);
    return metadata;
  }

  #deadline(extraSeconds = 0) {
    return new Date(Date.now() + (this.timeoutSeconds + extraSeconds) * 1000);
  }

  async #backoff(attempt, error) {
    const ceiling = Math.min(5000, 200 * 2 ** (attempt - 1));
    const hint = (error.retryDelaySeconds ?? 0) * 1000;
    await sleep(Math.max(hint, ceiling / 2 + Math.random() * (ceiling / 2)));
  }

  /**
   * One unary call, retried on UNAVAILABLE and CANCELLED (every call here is
   * idempotent; a gateway replica that stops cancels the calls it had
   * received but not begun, and this client never cancels a unary call).
   */
  async #unary(method, request, extraSeconds = 0) {
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await new Promise((resolve, reject) => {
          this.stub[method](
            request,
            this.#metadata(),
            { deadline: this.#deadline(extraSeconds) },
            (error, response) => (error ? reject(new GatewayError(error)) : resolve(response)),
          );
        });
      } catch (error) {
        if (!RETRIED.has(error.code) || attempt >= this.maxAttempts) throw error;
        await this.#backoff(attempt, error);
      }
    }
  }

  /**
   * Submit a job. A `request_id` is generated when missing and reused by
   * every retry, so a retry never makes a second job.
   * @returns {Promise<{job_id: string, state: string, queue_position: number, deduplicated: boolean, request_id: string}>}
   */
  async generate(request) {
    const message = { ...request, request_id: request.request_id || `node-${randomUUID()}` };
    const response = await this.#unary("Generate", message);
    return { ...response, request_id: message.request_id };
  }

  /** The job now, or once finished when `waitSeconds` allows. */
  async getResult(jobId, { waitSeconds = 0, presignTtlSeconds = 0 } = {}) {
    const request = { job_id: jobId };
    if (waitSeconds) request.wait_timeout = seconds(waitSeconds);
    if (presignTtlSeconds) request.presign_ttl = seconds(presignTtlSeconds);
    const response = await this.#unary("GetResult", request, waitSeconds);
    return plainJob(response.job);
  }

  async cancelJob(jobId) {
    return plainJob((await this.#unary("CancelJob", { job_id: jobId })).job);
  }

  /**
   * Every template the gateway serves (built-in and from its templates
   * directory), newest version of each first; parameters' `default_value`
   * are plain values.
   */
  async listTemplates({ allVersions = false } = {}) {
    const templates = [];
    let pageToken = "";
    do {
      const page = await this.#unary("ListTemplates", {
        page_token: pageToken,
        all_versions: allVersions,
      });
      templates.push(...page.templates.map(plainTemplate));
      pageToken = page.next_page_token;
    } while (pageToken);
    return templates;
  }

  /** One template with its parameters (version 0: the newest); NOT_FOUND when unknown. */
  async getTemplate(name, { version = 0 } = {}) {
    return plainTemplate(await this.#unary("GetTemplate", { name, version }));
  }

  /** The model files the backends hold, by folder: [{name, files: [{name, backends}]}]. */
  async listModels({ folder = "" } = {}) {
    return (await this.#unary("ListModels", { folder })).folders;
  }

  /**
   * Run a named template and follow it to the end (see `run`). `params` are
   * plain values by parameter name; an image parameter takes a Buffer (sent
   * inline), an uploaded image's name, or `artifactInput(jobId, artifact)`.
   * @param {string} name
   * @param {Record<string, unknown>} [params]
   * @param {{version?: number, onProgress?: (event: object) => void, requestId?: string}} [options]
   */
  async runTemplate(name, params = {}, { version = 0, onProgress, requestId } = {}) {
    const values = Object.fromEntries(
      Object.entries(params).map(([key, value]) => [key, templateValue(value)]),
    );
    const template = { name, version, params: toStruct(values) };
    return this.run({ template, request_id: requestId }, { onProgress });
  }

  async listJobs({ states = [], pageSize = 0, pageToken = "" } = {}) {
    return this.#unary("ListJobs", { states, page_size: pageSize, page_token: pageToken });
  }

  /**
   * Progress events until the job's final event: a snapshot first, then
   * each event once, in order. A dropped connection is resumed with
   * `after_sequence`, so nothing is missed or repeated.
   * With `includePreviews`, `preview` events (the newest intermediate image,
   * at most `previewMaxFps` a second, server default 2) come in between;
   * they carry the sequence of the event before them and are never replayed.
   * @param {string} jobId
   * @param {{afterSequence?: number, includePreviews?: boolean, previewMaxFps?: number}} [options]
   *   afterSequence: replay events after this sequence (0: all)
   */
  async *streamProgress(jobId, { afterSequence, includePreviews = false, previewMaxFps } = {}) {
    let last = null; // newest sequence delivered, once the first message arrived
    let failures = 0;
    for (;;) {
      const request = { job_id: jobId, include_previews: includePreviews };
      if (includePreviews && previewMaxFps !== undefined) request.preview_max_fps = previewMaxFps;
      const resumeAfter = last ?? afterSequence;
      if (resumeAfter !== undefined && resumeAfter !== null) request.after_sequence = resumeAfter;
      const call = this.stub.StreamProgress(request, this.#metadata());
      let state = "";
      try {
        for await (const event of call) {
          if (event.event === "preview") {
            yield event; // not an event of the job's log: no sequence of its own
            continue;
          }
          if (event.event === "snapshot") {
            if (last !== null) continue; // a resumed stream's snapshot adds nothing
            last = afterSequence === undefined ? event.sequence : Math.min(event.sequence, afterSequence);
          } else {
            if (last !== null && event.sequence <= last) continue;
            last = event.sequence;
          }
          failures = 0;
          state = event.state;
          yield event;
          if (TERMINAL_EVENTS.has(event.event)) return;
        }
        if (TERMINAL_STATES.has(state)) return;
        throw new GatewayError({
          code: grpc.status.UNAVAILABLE,
          details: "the progress stream ended before the job finished",
        });
      } catch (error) {
        const typed = error instanceof GatewayError ? error : new GatewayError(error);
        failures += 1;
        if (!RETRIED.has(typed.code) || failures >= this.maxAttempts) throw typed;
        await this.#backoff(failures, typed);
      } finally {
        call.cancel();
      }
    }
  }

  /**
   * The bytes of an artifact through ReadArtifact, checked against its
   * recorded size and sha256.
   * @param {{key: string, sha256?: string, size_bytes?: string}} artifact
   */
  async readArtifact(jobId, artifact) {
    const call = this.stub.ReadArtifact({ job_id: jobId, artifact: artifact.key }, this.#metadata());
    const chunks = [];
    try {
      for await (const message of call) {
        if (message.chunk?.length) chunks.push(message.chunk);
      }
    } catch (error) {
      throw new GatewayError(error);
    }
    const data = Buffer.concat(chunks);
    const digest = createHash("sha256").update(data).digest("hex");
    if (artifact.sha256 && digest !== artifact.sha256) {
      throw new Error(`artifact ${artifact.key}: sha256 ${digest}, expected ${artifact.sha256}`);
    }
    if (artifact.size_bytes && Number(artifact.size_bytes) !== data.length) {
      throw new Error(`artifact ${artifact.key}: ${data.length} bytes, expected ${artifact.size_bytes}`);
    }
    return data;
  }

  /**
   * Text to image in one call: submit, follow progress, return the finished
   * job (throws JobError unless it succeeded).
   * @param {object} image TextToImage fields: prompt, width, height, steps, seed, ...
   * @param {{onProgress?: (event: object) => void, onPreview?: (preview: object) => void,
   *   previewMaxFps?: number, requestId?: string}} [options] `onPreview` gets each
   *   NodePreview (node_id, class_type, content_type, image: Buffer, value, max)
   */
  async generateImage(image, { requestId, ...options } = {}) {
    return this.run({ text_to_image: image, request_id: requestId }, options);
  }

  /** Like generateImage, for an AnimateDiff video (Video fields). */
  async generateVideo(video, { requestId, ...options } = {}) {
    return this.run({ video, request_id: requestId }, options);
  }

  /** Submit any GenerateRequest and follow it to the end (options as generateImage). */
  async run(request, { onProgress, onPreview, previewMaxFps } = {}) {
    const submitted = await this.generate(request);
    const options = { afterSequence: 0, includePreviews: Boolean(onPreview), previewMaxFps };
    for await (const event of this.streamProgress(submitted.job_id, options)) {
      if (event.event === "preview") onPreview?.(event.preview);
      else onProgress?.(event);
    }
    const job = await this.getResult(submitted.job_id, { waitSeconds: 30 });
    if (job.state !== "JOB_STATE_SUCCEEDED") throw new JobError(job);
    return job;
  }
}

// -- google.protobuf.Struct <-> plain values -------------------------------------
//
// proto-loader hands Struct/Value over as messages ({fields: {...}}, {kind:
// "stringValue", stringValue: "..."}); callers want plain JSON values. The
// well-known types come from protobufjs' built-in definitions, whose field
// names are camelCase even with keepCase.

/** A plain JSON value as a google.protobuf.Value message. */
export function toValue(value) {
  if (value === null || value === undefined) return { nullValue: "NULL_VALUE" };
  if (typeof value === "string") return { stringValue: value };
  if (typeof value === "boolean") return { boolValue: value };
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new TypeError(`${value} is not a finite number`);
    return { numberValue: value };
  }
  if (typeof value === "bigint") {
    if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < -BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new RangeError(`${value} is beyond 2**53, which a JSON number cannot carry exactly`);
    }
    return { numberValue: Number(value) };
  }
  if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
  if (typeof value === "object") return { structValue: toStruct(value) };
  throw new TypeError(`a ${typeof value} is not a JSON value`);
}

/** A plain object as a google.protobuf.Struct message. */
export function toStruct(object) {
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, toValue(v)])) };
}

/** A google.protobuf.Value message as a plain value. */
export function fromValue(message) {
  if (!message) return null;
  switch (message.kind) {
    case "stringValue":
      return message.stringValue;
    case "numberValue":
      return message.numberValue;
    case "boolValue":
      return message.boolValue;
    case "structValue":
      return fromStruct(message.structValue);
    case "listValue":
      return (message.listValue?.values ?? []).map(fromValue);
    default:
      return null;
  }
}

/** A google.protobuf.Struct message as a plain object. */
export function fromStruct(message) {
  return Object.fromEntries(
    Object.entries(message?.fields ?? {}).map(([k, v]) => [k, fromValue(v)]),
  );
}

/**
 * A template parameter value as the API takes it: a Buffer (or Uint8Array)
 * is sent inline as `{bytes: "<base64>"}` (at most 8 MiB); everything else is
 * a JSON value, e.g. an uploaded image's name or `artifactInput(...)`.
 */
export function templateValue(value) {
  if (value instanceof Uint8Array) return { bytes: Buffer.from(value).toString("base64") };
  return value;
}

/** An earlier job's output as an image parameter (chaining jobs). */
export function artifactInput(jobId, artifact) {
  return { artifact: { job_id: jobId, key: typeof artifact === "string" ? artifact : artifact.key } };
}

/** A Template message with `default_value` of each parameter as a plain value. */
function plainTemplate(template) {
  return {
    ...template,
    parameters: template.parameters.map((p) => ({
      ...p,
      default_value: p.default_value ? fromValue(p.default_value) : undefined,
    })),
  };
}

/** A Job message with `template_params` as a plain object. */
function plainJob(job) {
  return job ? { ...job, template_params: fromStruct(job.template_params) } : job;
}

/** The job's overall progress in [0, 1] after an event, or null if it does not say. */
export function eventFraction(event) {
  if (event.event === "node_progress") return event.node_progress.job_fraction;
  if (event.event === "snapshot") return event.snapshot.job?.progress?.fraction ?? 0;
  if (event.event === "succeeded") return 1;
  return null;
}
