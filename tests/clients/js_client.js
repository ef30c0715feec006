// Drives durable's management API with Durable Functions' own JavaScript client.
//
// Usage: node js_client.js <host-url> <key>   (NODE_PATH points at the installed packages)
//
// The client (npm `durable-functions` 3.x, installed by install.sh) is built the way the
// Functions host builds it: `df.getClient(context)` on an invocation context whose durable
// client input is the binding JSON (taskHubName, creationUrls, managementUrls, baseUrl,
// requiredQueryStringParameters, rpcBaseUrl), with rpcBaseUrl pointing at the management
// API. It has no option for extra headers, so the one thing added here is the
// `x-functions-key` header, on the defaults of the axios instance the client sends with.
//
// Every call the client offers runs once with an assertion on its result; each step has
// a timeout, so a hang (getStatusAll following continuation tokens forever, say) fails
// instead of stalling. Exits non-zero when a step fails.

"use strict";

const assert = require("node:assert/strict");
const df = require("durable-functions");
const { HttpRequest } = require("@azure/functions");

const URL_ = process.argv[2].replace(/\/$/, "");
const KEY = process.argv[3];
const BASE = `${URL_}/runtime/webhooks/durabletask`;
const STEP_TIMEOUT_MS = 30000;
const S = df.OrchestrationRuntimeStatus;

const bindings = {
  taskHubName: "TestHub",
  creationUrls: {
    createNewInstancePostUri: `${BASE}/orchestrators/{functionName}[/{instanceId}]`,
    createAndWaitOnNewInstancePostUri:
      `${BASE}/orchestrators/{functionName}[/{instanceId}]` +
      "?timeout={timeoutInSeconds}&pollingInterval={intervalInSeconds}",
  },
  managementUrls: {
    id: "INSTANCEID",
    statusQueryGetUri: `${BASE}/instances/INSTANCEID`,
    sendEventPostUri: `${BASE}/instances/INSTANCEID/raiseEvent/{eventName}`,
    terminatePostUri: `${BASE}/instances/INSTANCEID/terminate?reason={text}`,
    rewindPostUri: `${BASE}/instances/INSTANCEID/rewind?reason={text}`,
    purgeHistoryDeleteUri: `${BASE}/instances/INSTANCEID`,
    restartPostUri: `${BASE}/instances/INSTANCEID/restart`,
    suspendPostUri: `${BASE}/instances/INSTANCEID/suspend?reason={text}`,
    resumePostUri: `${BASE}/instances/INSTANCEID/resume?reason={text}`,
  },
  baseUrl: BASE,
  requiredQueryStringParameters: "",
  rpcBaseUrl: `${BASE}/`,
};

/// The client as a function with a durable client input receives it.
function makeClient() {
  // Without WEBSITE_HOSTNAME the client rewrites the bindings' origins to localhost:7071.
  process.env.WEBSITE_HOSTNAME = new URL(URL_).host;
  const input = df.input.durableClient();
  const context = {
    options: { extraInputs: [input] },
    extraInputs: { get: (i) => (i === input ? bindings : undefined) },
  };
  const client = df.getClient(context);
  // The one change to the client: the axios instance it sends with carries the key.
  client.axiosInstance.defaults.headers.common["x-functions-key"] = KEY;
  return client;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function statusWhen(client, id, done, what) {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  for (;;) {
    let st;
    try {
      st = await client.getStatus(id, { showInput: true });
    } catch (e) {
      st = undefined; // 404 while it does not exist
    }
    if (st && done(st)) return st;
    if (Date.now() > deadline) {
      throw new Error(`${id}: never ${what}; last status ${JSON.stringify(st)}`);
    }
    await sleep(50);
  }
}

const finished = (client, id) =>
  statusWhen(client, id, (s) => [S.Completed, S.Failed, S.Terminated].includes(s.runtimeStatus), "finished");

async function startAndStatus(client) {
  const id = await client.startNew("hello_cities", { input: ["Tokyo", "Lima"] });
  let st = await finished(client, id);
  assert.equal(st.runtimeStatus, S.Completed);
  assert.deepEqual(st.output, ["Hello Tokyo!", "Hello Lima!"]);
  assert.deepEqual(st.input, ["Tokyo", "Lima"]);
  const fixed = await client.startNew("hello_cities", { instanceId: "js-history", input: ["Oslo"] });
  assert.equal(fixed, "js-history");
  await finished(client, fixed);
  st = await client.getStatus(fixed, { showHistory: true, showHistoryOutput: true, showInput: true });
  assert.equal(st.name, "hello_cities");
  assert.equal(st.instanceId, fixed);
  assert.deepEqual(st.input, ["Oslo"]);
  assert.ok(st.createdTime instanceof Date && !isNaN(st.createdTime));
  // The client drops history from its status object; the raw answer carries it.
  const raw = await client.axiosInstance.get(`${BASE}/instances/${fixed}?showHistory=true&showHistoryOutput=true`);
  const kinds = raw.data.historyEvents.map((e) => e.EventType);
  assert.deepEqual(kinds, ["ExecutionStarted", "TaskCompleted", "ExecutionCompleted"]);
  assert.equal(raw.data.historyEvents[1].Result, "Hello Oslo!");
  await assert.rejects(client.getStatus("js-no-such-instance"), /404/);
}

async function mistypedInputIsRefused(client) {
  await assert.rejects(
    client.startNew("hello_cities", { instanceId: "js-mistyped", input: [1, 2, 3] }),
    (e) => /400/.test(e.message) && /Vec<String>/.test(e.message),
  );
  await assert.rejects(client.getStatus("js-mistyped"), /404/);
}

async function statusAllAndBy(client) {
  const done = await client.startNew("hello_cities", { input: ["Rome"] });
  await finished(client, done);
  const waiting = await client.startNew("approval", { instanceId: "js-waiting", input: { document: "status-by" } });
  await statusWhen(client, waiting, (s) => s.runtimeStatus === S.Running, "running");
  const every = await client.getStatusAll();
  const ids = new Set(every.map((s) => s.instanceId));
  assert.ok(ids.has(done) && ids.has(waiting), `${done}, ${waiting} in ${[...ids]}`);
  const completed = await client.getStatusBy({ runtimeStatus: [S.Completed] });
  assert.ok(completed.length > 0 && completed.every((s) => s.runtimeStatus === S.Completed));
  assert.ok(completed.some((s) => s.instanceId === done));
  assert.ok(!completed.some((s) => s.instanceId === waiting));
  const hour = 3600 * 1000;
  const recent = await client.getStatusBy({
    createdTimeFrom: new Date(Date.now() - hour),
    createdTimeTo: new Date(Date.now() + hour),
    runtimeStatus: [S.Running, S.Completed],
  });
  const recentIds = new Set(recent.map((s) => s.instanceId));
  assert.ok(recentIds.has(done) && recentIds.has(waiting));
  const future = await client.getStatusBy({ createdTimeFrom: new Date(Date.now() + hour) });
  assert.deepEqual(future, []);
  await client.terminate(waiting, "done with it");
}

async function raiseEvent(client) {
  const id = await client.startNew("approval", { instanceId: "js-approval", input: { document: "budget" } });
  await statusWhen(client, id, (s) => s.runtimeStatus === S.Running, "running");
  // A badly shaped decision is rejected by the orchestration, which keeps waiting.
  await client.raiseEvent(id, "Approval", { approved: "yes" });
  const st = await statusWhen(client, id, (s) => s.customStatus && s.customStatus.rejected === 1, "rejected");
  assert.equal(st.runtimeStatus, S.Running);
  await client.raiseEvent(id, "Approval", { approved: false });
  assert.equal((await finished(client, id)).output, "budget: rejected");
  await assert.rejects(client.raiseEvent("js-nobody", "Approval", {}), /No instance/);
}

async function terminateSuspendResume(client) {
  const id = await client.startNew("approval", { instanceId: "js-suspend", input: { document: "holiday" } });
  await statusWhen(client, id, (s) => s.runtimeStatus === S.Running, "running");
  await client.suspend(id, "for a while");
  await statusWhen(client, id, (s) => s.runtimeStatus === S.Suspended, "suspended");
  await client.resume(id, "carry on");
  await statusWhen(client, id, (s) => s.runtimeStatus === S.Running, "resumed");
  await client.terminate(id, "no longer needed");
  const st = await statusWhen(client, id, (s) => s.runtimeStatus === S.Terminated, "terminated");
  assert.equal(st.output, "no longer needed");
  await assert.rejects(client.terminate("js-nobody", "x"), /No instance/);
}

async function rewind(client) {
  const id = await client.startNew("flaky", { instanceId: "js-flaky", input: 21 });
  assert.equal((await finished(client, id)).runtimeStatus, S.Failed);
  await client.rewind(id, "try again");
  const st = await statusWhen(client, id, (s) => s.runtimeStatus === S.Completed, "rewound");
  assert.equal(st.output, 42);
}

async function purge(client) {
  const one = await client.startNew("hello_cities", { instanceId: "js-purge-1", input: ["Bern"] });
  await finished(client, one);
  assert.equal((await client.purgeInstanceHistory(one)).instancesDeleted, 1);
  await assert.rejects(client.getStatus(one), /404/);
  assert.equal((await client.purgeInstanceHistory(one)).instancesDeleted, 0);
  const doomed = await client.startNew("approval", { instanceId: "js-purge-2", input: { document: "doomed" } });
  await statusWhen(client, doomed, (s) => s.runtimeStatus === S.Running, "running");
  await client.terminate(doomed, "to be purged");
  await statusWhen(client, doomed, (s) => s.runtimeStatus === S.Terminated, "terminated");
  const result = await client.purgeInstanceHistoryBy({
    createdTimeFrom: new Date(Date.now() - 3600 * 1000),
    runtimeStatus: [S.Terminated],
  });
  assert.ok(result.instancesDeleted >= 1, JSON.stringify(result));
  await assert.rejects(client.getStatus(doomed), /404/);
  assert.deepEqual(await client.getStatusBy({ runtimeStatus: [S.Terminated] }), []);
}

async function waitOrCheckStatus(client) {
  const request = new HttpRequest({ method: "POST", url: `${URL_}/api/start` });
  const done = await client.startNew("hello_cities", { input: ["Kyiv"] });
  let resp = await client.waitForCompletionOrCreateCheckStatusResponse(request, done, {
    timeoutInMilliseconds: 20000,
    retryIntervalInMilliseconds: 100,
  });
  assert.equal(resp.status, 200);
  assert.deepEqual(await resp.json(), ["Hello Kyiv!"]);
  const waiting = await client.startNew("approval", { instanceId: "js-wait-check", input: { document: "slow" } });
  resp = await client.waitForCompletionOrCreateCheckStatusResponse(request, waiting, {
    timeoutInMilliseconds: 300,
    retryIntervalInMilliseconds: 100,
  });
  assert.equal(resp.status, 202);
  const links = await resp.json();
  assert.equal(links.id, waiting);
  // The management URLs it hands out work against the API.
  const st = await client.axiosInstance.get(links.statusQueryGetUri);
  assert.equal(st.status, 202);
  assert.equal(st.data.instanceId, waiting);
  const payload = client.createHttpManagementPayload(waiting);
  assert.equal((await client.axiosInstance.post(payload.terminatePostUri.replace("{text}", "bye"))).status, 202);
}

async function entities(client) {
  const counter = new df.EntityId("counter", "js");
  await client.signalEntity(counter, "add", 40);
  await client.signalEntity(counter, "add", 2);
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  for (;;) {
    const state = await client.readEntityState(counter);
    if (state.entityExists && state.entityState && state.entityState.value === 42) break;
    if (Date.now() > deadline) throw new Error(`counter never reached 42: ${JSON.stringify(state)}`);
    await sleep(50);
  }
  await assert.rejects(client.signalEntity(counter, "add", "five"), /400/);
  await client.signalEntity(counter, "reset");
  const missing = await client.readEntityState(new df.EntityId("counter", "js-nobody"));
  assert.equal(missing.entityExists, false);
}

function withTimeout(promise, name) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${name} did not finish within ${STEP_TIMEOUT_MS * 2} ms`)), STEP_TIMEOUT_MS * 2);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function main() {
  const client = makeClient();
  const steps = [
    startAndStatus,
    mistypedInputIsRefused,
    statusAllAndBy,
    raiseEvent,
    terminateSuspendResume,
    rewind,
    purge,
    waitOrCheckStatus,
    entities,
  ];
  let passed = 0;
  let failed = 0;
  for (const step of steps) {
    try {
      await withTimeout(step(client), step.name);
      passed += 1;
      console.log(`ok   js ${step.name}`);
    } catch (e) {
      failed += 1;
      console.log(`FAIL js ${step.name}: ${e && e.stack ? e.stack : e}`);
    }
  }
  console.log(`js client: ${passed} passed, ${failed} failed`);
  // A hung request must not keep the process alive.
  process.exit(failed ? 1 : 0);
}

main();
