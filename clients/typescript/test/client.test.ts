// The TypeScript client against a running Darkroom (DARKROOM_URL, DARKROOM_API_KEY): run by
// tests/e2e/test_clients.py against the whole stack.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Darkroom, DarkroomError, type Progress } from "../src/index.js";

const PNG = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const darkroom = new Darkroom();

test("generates with live progress and downloads the PNG", async () => {
  const seen: Progress[] = [];
  const job = await darkroom.generate(
    { prompt: "a typescript fox", settings: { num_inference_steps: 4, width: 64, height: 64, seed: 5 } },
    { onProgress: (p) => seen.push(p) },
  );
  assert.equal(job.status, "completed");
  assert.equal(job.images!.length, 1);
  assert.ok(seen.length >= 1);
  assert.equal(seen.at(-1)!.step, 4);
  assert.equal(seen.at(-1)!.totalSteps, 4);
  const png = await darkroom.image(job.images![0].id);
  assert.deepEqual([...png.slice(0, 8)], PNG);
  const listed = [];
  for await (const summary of darkroom.jobs({ pageSize: 1 })) {
    listed.push(summary.id);
    if (summary.id === job.id || listed.length > 50) break;
  }
  assert.ok(listed.includes(job.id));
  const types = [];
  for await (const event of darkroom.events(job.id)) types.push(event.type);
  assert.equal(types[0], "job.accepted");
  assert.equal(types.at(-1), "job.completed");
});

test("a bad request is a DarkroomError with the API's message", async () => {
  await assert.rejects(
    darkroom.submit({ prompt: "a fox", settings: { width: 63 } }),
    (error: unknown) => error instanceof DarkroomError && error.status === 400 && /width/.test(error.message),
  );
  await assert.rejects(new Darkroom({ apiKey: "drk_nope_nope" }).quota(),
    (error: unknown) => error instanceof DarkroomError && error.status === 401);
});

test("models, quota, LoRAs and the gallery", async () => {
  const models = await darkroom.models();
  assert.ok(models.default in models.models);
  assert.ok("usage" in (await darkroom.quota()));
  assert.ok(Array.isArray((await darkroom.loras("fox")).loras));
  for await (const image of darkroom.gallery({ search: "typescript fox", pageSize: 2 })) {
    assert.match(image.url, /^\/v1\/images\//);
    break;
  }
});
