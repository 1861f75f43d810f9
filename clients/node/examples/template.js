#!/usr/bin/env node
// Run a workflow template by name, print its progress, save its outputs.
//
//   node examples/template.js --list
//   node examples/template.js sdxl-lora -p prompt="a red fox" -p steps=20 [--version N] [--out DIR]
//   node examples/template.js image-to-image -p prompt="a watercolor" -p image=@photo.png
//
// A value is JSON when it parses as JSON (20, 0.5, true), else text; @FILE
// sends the file inline (an image, at most 8 MiB). The gateway is
// COMFYUI_GRPC_TARGET (default localhost:50051); a bearer token is read from
// COMFYUI_GRPC_TOKEN.

import { mkdir, readFile } from "node:fs/promises";
import { parseArgs } from "node:util";

import { saveNew } from "../src/files.js";
import { ComfyUIGrpcClient, GatewayError, JobError, eventFraction } from "../src/index.js";

const usage =
  'usage: node examples/template.js NAME [-p NAME=VALUE ...] [--version N] [--out DIR] | --list';
const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    param: { type: "string", short: "p", multiple: true, default: [] },
    version: { type: "string", default: "0" },
    out: { type: "string", default: "." },
    list: { type: "boolean", default: false },
    target: { type: "string" },
  },
});

/** NAME=VALUE: JSON when it parses, else text; @FILE is the file's bytes. */
async function parseParam(text) {
  const at = text.indexOf("=");
  if (at <= 0) throw new Error(`-p ${text}: not NAME=VALUE, e.g. steps=20`);
  const name = text.slice(0, at);
  const raw = text.slice(at + 1);
  if (raw.startsWith("@")) return [name, await readFile(raw.slice(1))];
  try {
    return [name, JSON.parse(raw)];
  } catch {
    return [name, raw];
  }
}

const [name] = positionals;
if (!values.list && (!name || positionals.length > 1)) {
  console.error(usage);
  process.exit(2);
}
let params;
try {
  params = Object.fromEntries(await Promise.all(values.param.map(parseParam)));
} catch (error) {
  console.error(`error: ${error.message}\n${usage}`);
  process.exit(2);
}

const client = new ComfyUIGrpcClient({ target: values.target });
try {
  if (values.list) {
    for (const t of await client.listTemplates()) {
      const params = t.parameters.map((p) => (p.required ? `${p.name}*` : p.name)).join(" ");
      console.log(`${t.name} v${t.version}${t.runnable ? "" : " (not runnable)"}: ${params}`);
    }
  } else {
    const job = await client.runTemplate(name, params, {
      version: Number(values.version),
      onProgress(event) {
        const percent = String(Math.round((eventFraction(event) ?? 0) * 100)).padStart(3);
        const state = event.state.replace("JOB_STATE_", "").toLowerCase();
        if (eventFraction(event) !== null) console.error(`${percent}% ${state} ${event.event}`);
      },
    });
    console.error(`${job.template} v${job.template_version}: ${JSON.stringify(job.template_params)}`);
    await mkdir(values.out, { recursive: true });
    for (const artifact of job.artifacts) {
      const bytes = await client.readArtifact(job.job_id, artifact);
      const file = await saveNew(values.out, job.job_id, artifact.filename, bytes);
      console.log(`${file}  key=${artifact.key}  ${artifact.content_type}  ${artifact.size_bytes} bytes`);
    }
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
