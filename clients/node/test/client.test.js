// Runs against a live gateway named by COMFYUI_GRPC_TARGET (the pytest test
// tests/clients/test_node_client.py starts one); skipped without it.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import {
  ComfyUIGrpcClient,
  DEFAULT_PROTOS_DIR,
  GatewayError,
  jobFileName,
  loadProtos,
  safeName,
  saveNew,
} from "../src/index.js";

const target = process.env.COMFYUI_GRPC_TARGET;
const here = path.dirname(fileURLToPath(import.meta.url));
const small = { prompt: "a lighthouse", width: 64, height: 64, steps: 3, seed: "7" };

test("the service loads from the repository's protos", () => {
  assert.ok(DEFAULT_PROTOS_DIR.endsWith(`${path.sep}protos`));
  const v1 = loadProtos();
  const methods = Object.keys(v1.GenerationService.service);
  for (const name of ["Generate", "StreamProgress", "CancelJob", "GetResult", "ListJobs", "UploadInput", "ReadArtifact"]) {
    assert.ok(methods.includes(name), `${name} is missing`);
  }
});

test("saveNew keeps to its folder and never overwrites", async () => {
  const root = await mkdtemp(path.join(tmpdir(), "comfyui-grpc-node-files-"));
  try {
    const dir = path.join(root, "box");
    await mkdir(dir);
    const hostile = ["/tmp/absolute.png", "../../escape.png", "..\\..\\escape.png", "a/b/c.png", "..", "", ".hidden"];
    const written = [];
    for (const name of hostile) {
      const file = await saveNew(dir, "0123abcd-ffff", name, Buffer.from(name));
      assert.equal(path.dirname(file), dir, name);
      written.push(file);
    }
    assert.equal(new Set(written).size, hostile.length);
    assert.deepEqual(await readdir(root), ["box"]);
    assert.equal(safeName("../x.png"), "x.png");
    assert.equal(jobFileName("0123abcd-ffff", "image_00001_.png"), "0123abcd-image_00001_.png");
    const again = await saveNew(dir, "0123abcd-ffff", "image_00001_.png", "1");
    const twice = await saveNew(dir, "0123abcd-ffff", "image_00001_.png", "2");
    assert.equal(path.basename(twice), "0123abcd-image_00001_-2.png");
    assert.equal(await readFile(again, "utf8"), "1");
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

describe("against the gateway", { skip: target ? false : "COMFYUI_GRPC_TARGET is not set" }, () => {
  let client;
  before(() => {
    client = new ComfyUIGrpcClient({ target });
  });
  after(() => client?.close());

  test("generateImage reports ordered progress and returns a verified PNG", async () => {
    const events = [];
    const job = await client.generateImage(small, { onProgress: (e) => events.push(e) });
    assert.equal(job.state, "JOB_STATE_SUCCEEDED");
    assert.equal(events[0].event, "snapshot");
    const sequences = events.slice(1).map((e) => e.sequence);
    assert.deepEqual(sequences, sequences.map((_, i) => i + 1));
    assert.equal(events.at(-1).event, "succeeded");
    assert.ok(events.some((e) => e.event === "node_progress" && e.node_progress.class_type === "KSampler"));
    const [artifact] = job.artifacts;
    assert.equal(artifact.content_type, "image/png");
    const bytes = await client.readArtifact(job.job_id, artifact);
    assert.equal(bytes.subarray(1, 4).toString(), "PNG");
    assert.equal(createHash("sha256").update(bytes).digest("hex"), artifact.sha256);
  });

  test("a repeated request_id returns the first job", async () => {
    const request = { text_to_image: { ...small, prompt: "twice" }, request_id: `node-test-${Date.now()}` };
    const first = await client.generate(request);
    const second = await client.generate(request);
    assert.equal(second.job_id, first.job_id);
    assert.equal(first.deduplicated, false);
    assert.equal(second.deduplicated, true);
    const job = await client.getResult(first.job_id, { waitSeconds: 30 });
    assert.equal(job.state, "JOB_STATE_SUCCEEDED");
  });

  test("errors carry the status code, reason and field violations", async () => {
    await assert.rejects(client.generate({ text_to_image: { prompt: "x", width: 7 } }), (error) => {
      assert.ok(error instanceof GatewayError);
      assert.equal(error.codeName, "INVALID_ARGUMENT");
      assert.equal(error.domain, "comfyui-grpc");
      assert.ok(error.reason);
      assert.ok(error.violations.some((v) => v.field === "text_to_image.width"), error.message);
      return true;
    });
    await assert.rejects(client.getResult("00000000-0000-4000-8000-000000000000"), (error) => {
      assert.equal(error.codeName, "NOT_FOUND");
      return true;
    });
  });

  test("previews come to onPreview, in between ordered progress", async () => {
    const graph = {
      1: { class_type: "EmptyImage", inputs: { width: 64, height: 64, batch_size: 1, color: 0 } },
      2: {
        class_type: "TestSlowProgress",
        inputs: { image: ["1", 0], steps: 3, seconds_per_step: 0.3, send_preview: true },
      },
      3: { class_type: "SaveImage", inputs: { images: ["2", 0], filename_prefix: "node-previews" } },
    };
    const previews = [];
    const events = [];
    await client.run(
      { workflow_json: JSON.stringify(graph) },
      { onProgress: (e) => events.push(e), onPreview: (p) => previews.push(p), previewMaxFps: 10 },
    );
    assert.deepEqual(previews.map((p) => p.value), [1, 2, 3]);
    for (const preview of previews) {
      assert.equal(preview.node_id, "2");
      assert.equal(preview.class_type, "TestSlowProgress");
      assert.equal(preview.content_type, "image/jpeg");
      assert.equal(preview.image.subarray(0, 3).toString("hex"), "ffd8ff");
    }
    assert.ok(events.every((e) => e.event !== "preview"));
    const sequences = events.slice(1).map((e) => e.sequence);
    assert.deepEqual(sequences, sequences.map((_, i) => i + 1));
  });

  test("a job can be cancelled while it runs", async () => {
    const submitted = await client.generate({ text_to_image: { ...small, prompt: "long", steps: 200 } });
    let last;
    for await (const event of client.streamProgress(submitted.job_id)) {
      last = event;
      if (event.event === "node_progress") await client.cancelJob(submitted.job_id);
    }
    assert.equal(last.event, "cancelled");
    assert.equal(last.state, "JOB_STATE_CANCELLED");
  });

  test("the example generates an image and prints progress", async () => {
    const out = await mkdtemp(path.join(tmpdir(), "comfyui-grpc-node-"));
    try {
      const example = () =>
        promisify(execFile)(
          process.execPath,
          [path.join(here, "..", "examples", "generate.js"), "a paper boat", "--size", "64x64", "--steps", "3", "--out", out],
          { env: { ...process.env, COMFYUI_GRPC_TARGET: target } },
        );
      const { stdout, stderr } = await example();
      assert.match(stderr, /100% succeeded succeeded/);
      const [file] = await readdir(out);
      assert.match(file, /^[0-9a-f]{8}-.+\.png$/);
      assert.ok(stdout.startsWith(path.join(out, file)));
      assert.equal((await readFile(path.join(out, file))).subarray(1, 4).toString(), "PNG");
      // A second run into the same folder keeps the first run's file.
      const second = await example();
      const files = (await readdir(out)).sort();
      assert.equal(files.length, 2);
      assert.ok(second.stdout.startsWith(path.join(out, files.find((f) => f !== file))));
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});
