// Runs against a live gateway named by COMFYUI_GRPC_TARGET (the pytest test
// tests/clients/test_node_client.py starts one); skipped without it.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import {
  ComfyUIGrpcClient,
  DEFAULT_PROTOS_DIR,
  GatewayError,
  artifactInput,
  fromStruct,
  jobFileName,
  loadProtos,
  safeName,
  saveNew,
  templateValue,
  toStruct,
} from "../src/index.js";

const target = process.env.COMFYUI_GRPC_TARGET;
const here = path.dirname(fileURLToPath(import.meta.url));
const small = { prompt: "a lighthouse", width: 64, height: 64, steps: 3, seed: "7" };

test("the service loads from the repository's protos", () => {
  assert.ok(DEFAULT_PROTOS_DIR.endsWith(`${path.sep}protos`));
  const v1 = loadProtos();
  const methods = Object.keys(v1.GenerationService.service);
  for (const name of ["Generate", "StreamProgress", "CancelJob", "GetResult", "ListJobs", "UploadInput", "ReadArtifact", "ListTemplates", "GetTemplate", "ListModels"]) {
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

test("template parameters travel as a Struct and come back as plain values", () => {
  const params = { prompt: "a fox", steps: 20, strong: true, none: null, tags: ["a", 1], nested: { x: 0.5 } };
  const struct = toStruct(params);
  assert.deepEqual(struct.fields.steps, { numberValue: 20 });
  // What proto-loader hands back names the set member in `kind`.
  const decoded = {
    fields: Object.fromEntries(
      Object.entries(struct.fields).map(([k, v]) => [k, { ...v, kind: Object.keys(v)[0] }]),
    ),
  };
  decoded.fields.tags.listValue.values = decoded.fields.tags.listValue.values.map((v) => ({ ...v, kind: Object.keys(v)[0] }));
  decoded.fields.nested.structValue.fields.x.kind = "numberValue";
  assert.deepEqual(fromStruct(decoded), params);
  assert.deepEqual(templateValue(Buffer.from("abc")), { bytes: "YWJj" });
  assert.deepEqual(artifactInput("j1", { key: "k/1.png" }), { artifact: { job_id: "j1", key: "k/1.png" } });
  assert.throws(() => toStruct({ seed: 2n ** 60n }), RangeError);
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
  test("templates and models are listed with plain values", async () => {
    const templates = await client.listTemplates();
    assert.deepEqual(templates.map((t) => t.name), ["image-to-image", "sdxl-lora", "text-to-image", "video"]);
    const lora = await client.getTemplate("sdxl-lora");
    const steps = lora.parameters.find((p) => p.name === "steps");
    assert.equal(steps.type, "PARAMETER_TYPE_INT");
    assert.equal(steps.default_value, 25);
    assert.equal(steps.min, 1);
    assert.equal(lora.parameters.find((p) => p.name === "prompt").required, true);
    await assert.rejects(client.getTemplate("nope"), (error) => error.codeName === "NOT_FOUND");
    const [loras] = await client.listModels({ folder: "loras" });
    assert.equal(loras.name, "loras");
    assert.deepEqual(loras.files.map((f) => f.name), ["detail.safetensors", "watercolor.safetensors"]);
  });

  test("runTemplate sends an image inline and chains an earlier job's output", async () => {
    const small = { steps: 2, width: 64, height: 64 };
    const fox = await client.runTemplate("sdxl-lora", { prompt: "a red fox", ...small });
    assert.equal(fox.template, "sdxl-lora");
    assert.equal(fox.template_params.prompt, "a red fox");
    assert.equal(typeof fox.template_params.seed, "number");
    const png = await client.readArtifact(fox.job_id, fox.artifacts[0]);
    const first = await client.runTemplate("image-to-image", { prompt: "a watercolor", image: png, ...small });
    assert.match(first.template_params.image, /^comfyui-grpc-/);
    const second = await client.runTemplate(
      "image-to-image",
      { prompt: "an oil painting", image: artifactInput(first.job_id, first.artifacts[0]), ...small },
      { version: 1 },
    );
    assert.equal(second.state, "JOB_STATE_SUCCEEDED");
    await assert.rejects(client.runTemplate("sdxl-lora", { prompt: "x", steps: 500 }), (error) => {
      assert.ok(error.violations.some((v) => v.field === "template.params.steps"), error.message);
      return true;
    });
  });

  test("the template example runs a template with -p values and an @file image", async () => {
    const out = await mkdtemp(path.join(tmpdir(), "comfyui-grpc-node-template-"));
    try {
      const run = (...args) =>
        promisify(execFile)(process.execPath, [path.join(here, "..", "examples", "template.js"), ...args], {
          env: { ...process.env, COMFYUI_GRPC_TARGET: target },
        });
      const listed = await run("--list");
      assert.match(listed.stdout, /^sdxl-lora v1: prompt\* negative seed steps/m);
      const fox = await run("sdxl-lora", "-p", "prompt=a red fox", "-p", "steps=2", "-p", "width=64", "-p", "height=64", "--out", out);
      const [foxFile] = await readdir(out);
      assert.ok(fox.stdout.startsWith(path.join(out, foxFile)));
      const photo = path.join(out, "photo.png");
      await writeFile(photo, await readFile(path.join(out, foxFile)));
      const { stdout, stderr } = await run(
        "image-to-image", "-p", "prompt=a watercolor", "-p", "steps=2", "-p", "width=64", "-p", "height=64",
        "-p", `image=@${photo}`, "--out", out,
      );
      assert.match(stderr, /100% succeeded succeeded/);
      assert.match(stderr, /image-to-image v1: .*"image":"comfyui-grpc-/);
      const saved = stdout.split("  ")[0];
      assert.equal((await readFile(saved)).subarray(1, 4).toString(), "PNG");
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});
