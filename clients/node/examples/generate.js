#!/usr/bin/env node
// Generate an image, print its progress, save it.
//
//   node examples/generate.js "a lighthouse at dusk" [--size 512x512] [--steps 20] [--out DIR] [--previews]
//
// --previews prints each live preview's node, step and size as the image
// forms (ComfyUI must run with a preview method, e.g. --preview-method auto).
//
// The gateway is COMFYUI_GRPC_TARGET (default localhost:50051); a bearer
// token is read from COMFYUI_GRPC_TOKEN.

import { mkdir } from "node:fs/promises";
import { parseArgs } from "node:util";

import { saveNew } from "../src/files.js";

import { ComfyUIGrpcClient, GatewayError, JobError, TERMINAL_EVENTS, eventFraction } from "../src/index.js";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    size: { type: "string", default: "1024x1024" },
    steps: { type: "string", default: "20" },
    seed: { type: "string" },
    out: { type: "string", default: "." },
    target: { type: "string" },
    previews: { type: "boolean", default: false },
  },
});
const prompt = positionals.join(" ");
if (!prompt) {
  console.error('usage: node examples/generate.js "a prompt" [--size WxH] [--steps N] [--out DIR]');
  process.exit(2);
}
const [width, height] = values.size.split("x").map(Number);

const client = new ComfyUIGrpcClient({ target: values.target });
let fraction = 0;
let node = "";
try {
  const job = await client.generateImage(
    { prompt, width, height, steps: Number(values.steps), seed: values.seed },
    {
      onProgress(event) {
        fraction = eventFraction(event) ?? fraction;
        if (event.event === "node_started") {
          node = `${event.node_started.class_type} (node ${event.node_started.node_id})`;
        } else if (event.event === "uploading" || TERMINAL_EVENTS.has(event.event)) {
          node = "";
        }
        const percent = String(Math.round(fraction * 100)).padStart(3);
        const state = event.state.replace("JOB_STATE_", "").toLowerCase();
        console.error(`${percent}% ${state} ${event.event} ${node}`.trimEnd());
      },
      onPreview: values.previews
        ? (preview) => {
            const step = preview.max ? ` step ${preview.value}/${preview.max}` : "";
            console.error(
              `preview ${preview.class_type} (node ${preview.node_id})${step}: ` +
                `${preview.image.length} bytes ${preview.content_type}`,
            );
          }
        : undefined,
    },
  );
  await mkdir(values.out, { recursive: true });
  for (const artifact of job.artifacts) {
    // JOBID8-name, numbered when taken: a second run never replaces the first's files.
    const file = await saveNew(values.out, job.job_id, artifact.filename, await client.readArtifact(job.job_id, artifact));
    console.log(`${file}  key=${artifact.key}  ${artifact.content_type}  ${artifact.size_bytes} bytes`);
  }
} catch (error) {
  if (error instanceof GatewayError || error instanceof JobError) {
    console.error(`error: ${error.message}`);
    process.exitCode = 1;
  } else {
    throw error;
  }
} finally {
  client.close();
}
