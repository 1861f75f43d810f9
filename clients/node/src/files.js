// Where a downloaded artifact lands on disk.
//
// An artifact's file name comes from ComfyUI through the gateway, so it is
// data, not a path: it may hold directories, `..` or be absolute, and every
// job's first image is called `image_00001_.png`. Saving into a folder
// therefore reduces the name to a safe base name, prefixes it with the job
// id's first eight characters, and never replaces an existing file: a taken
// name gets `-2`, `-3`, ... before its extension (created with the `wx` flag,
// which fails instead of overwriting, so racing writers keep their own file).

import { writeFile } from "node:fs/promises";
import path from "node:path";

const UNSAFE = /[\x00-\x1f\x7f<>:"|?*]/g;
const MAX_NAME_CHARS = 200;
const MAX_NUMBERED = 10000;

/** The last component of `filename`, with nothing that could leave a folder; "artifact" if empty. */
export function safeName(filename) {
  let base = String(filename ?? "").split(/[\\/]/).at(-1);
  base = base.replace(UNSAFE, "_").trim().replace(/^\.+/, "");
  if (base.length > MAX_NAME_CHARS) {
    const dot = base.lastIndexOf(".");
    const suffix = dot > 0 ? base.slice(dot) : "";
    base = base.slice(0, MAX_NAME_CHARS - suffix.length) + suffix;
  }
  return base || "artifact";
}

/** `JOBID8-name`: the job id's first eight characters and the safe file name. */
export function jobFileName(jobId, filename) {
  return `${safeName(jobId).slice(0, 8)}-${safeName(filename)}`;
}

/** `name` for 1, else `stem-N.ext`. */
export function numbered(name, number) {
  if (number === 1) return name;
  const dot = name.lastIndexOf(".");
  return dot > 0 ? `${name.slice(0, dot)}-${number}${name.slice(dot)}` : `${name}-${number}`;
}

/**
 * Write `data` into `dir` as a new file for this job's artifact; returns its path.
 * Never overwrites and never writes outside `dir`.
 */
export async function saveNew(dir, jobId, filename, data) {
  const name = jobFileName(jobId, filename);
  for (let number = 1; number <= MAX_NUMBERED; number++) {
    const file = path.join(dir, numbered(name, number));
    try {
      await writeFile(file, data, { flag: "wx" });
      return file;
    } catch (error) {
      if (error.code !== "EEXIST") throw error;
    }
  }
  throw new Error(`${path.join(dir, name)} and ${MAX_NUMBERED - 1} numbered variants exist`);
}
