// The Node example against a real server (FORKPOOL_BIN, default ../../target/debug/forkpool): stdin, exit
// codes, a cancel whose whole process tree must be gone, and error statuses. Run with `npm test`.
'use strict';

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');
const crypto = require('node:crypto');

const { connect, run, listJobs, getStatus, grpc } = require('../client.js');

const BIN = process.env.FORKPOOL_BIN || path.join(__dirname, '..', '..', '..', 'target', 'debug', 'forkpool');
let server;
let client;

before(async () => {
  fs.accessSync(BIN, fs.constants.X_OK);
  server = spawn(BIN, ['serve', '--listen', '127.0.0.1:0', '--allow-raw-commands', '--drain-timeout', '1s'], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const first = await new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: server.stdout });
    lines.once('line', resolve);
    server.once('exit', (code) => reject(new Error(`the server exited with ${code}`)));
  });
  const match = /^forkpool listening on (\S+)$/.exec(first);
  assert.ok(match, `unexpected first line: ${first}`);
  client = connect(match[1]);
});

after(async () => {
  if (client) client.close();
  if (server && server.exitCode === null) {
    const exited = new Promise((resolve) => server.once('exit', resolve));
    server.kill('SIGTERM');
    await exited;
  }
});

/** Pids of the processes whose environment has FORKPOOL_TEST_MARKER=marker (a job's whole tree). */
function marked(marker) {
  const needle = `FORKPOOL_TEST_MARKER=${marker}`;
  const pids = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (fs.readFileSync(`/proc/${entry}/environ`, 'latin1').split('\0').includes(needle)) pids.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return pids;
}

async function waitUntil(condition, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
  return true;
}

test('a catalog job and the catalog', async () => {
  const catalog = await listJobs(client);
  assert.ok(catalog.raw_commands_allowed);
  assert.ok(catalog.jobs.some((j) => j.name === 'cat'));
  const result = await run(client, { job: 'echo', args: ['hello', 'node'] });
  assert.equal(result.stdout.toString(), 'hello node\n');
  assert.equal(result.exitCode, 0);
  assert.equal(result.reason, 'EXIT_REASON_EXITED');
  assert.ok(result.pid > 0 && result.jobId);
});

test('stdin is streamed with back-pressure, then EOF; output after EOF arrives', async () => {
  const small = await run(client, { job: 'cat' }, { stdin: 'through stdin\n' });
  assert.equal(small.stdout.toString(), 'through stdin\n');
  assert.equal(small.exitCode, 0);
  // sort prints only after EOF.
  const sorted = await run(client, { command: ['sort'] }, { stdin: ['pear\n', 'apple\n', 'fig\n'] });
  assert.equal(sorted.stdout.toString(), 'apple\nfig\npear\n');
  // 8 MiB in and out: more than every buffer on the way, so writing must wait for the job to read.
  const big = crypto.randomBytes(8 << 20);
  const echoed = await run(client, { job: 'cat' }, { stdin: [big] });
  assert.equal(echoed.stdout.length, big.length);
  assert.ok(echoed.stdout.equals(big));
});

test('many small stdin pieces go out in large messages', async () => {
  const pieces = new Array(500000).fill('x\n');
  const counted = await run(client, { command: ['wc', '-l'] }, { stdin: pieces, deadline: 15000 });
  assert.equal(counted.stdout.toString().trim(), '500000');
  async function* slow() {
    for (const piece of ['a\n', 'b\n']) {
      await new Promise((r) => setTimeout(r, 20));
      yield piece;
    }
  }
  const streamed = await run(client, { job: 'cat' }, { stdin: slow() });
  assert.equal(streamed.stdout.toString(), 'a\nb\n');
});

test('exit codes and signals', async () => {
  const failed = await run(client, { command: ['sh', '-c', 'echo err >&2; exit 3'] });
  assert.equal(failed.exitCode, 3);
  assert.equal(failed.stderr.toString(), 'err\n');
  const killed = await run(client, { command: ['sh', '-c', 'kill -KILL $$'] });
  assert.equal(killed.exitCode, null);
  assert.equal(killed.signal, 9);
});

test('aborting cancels the call and the whole tree is gone', async () => {
  const marker = crypto.randomUUID();
  const before = (await getStatus(client)).cancelled_total;
  const controller = new AbortController();
  let tree = [];
  const job = run(
    client,
    { command: ['sh', '-c', 'sleep 30 & sleep 30 & echo ready; wait'], env: { FORKPOOL_TEST_MARKER: marker } },
    {
      signal: controller.signal,
      onEvent: (response) => {
        if (response.event === 'stdout' && response.stdout.toString().includes('ready')) {
          waitUntil(() => (tree = marked(marker)).length === 3, 5000).then(() => controller.abort());
        }
      },
    },
  );
  await assert.rejects(job, { name: 'AbortError' });
  assert.equal(tree.length, 3, `the tree: ${tree}`);
  const gone = await waitUntil(() => tree.every((pid) => !fs.existsSync(`/proc/${pid}`)), 1000);
  assert.ok(gone, `alive 1 s after the cancel: ${tree.filter((pid) => fs.existsSync(`/proc/${pid}`))}`);
  // The server counts the call as cancelled by its client.
  let cancelled = before;
  for (let tries = 0; tries < 200 && cancelled !== before + 1; tries++) {
    if (tries > 0) await new Promise((r) => setTimeout(r, 10));
    cancelled = (await getStatus(client)).cancelled_total;
  }
  assert.equal(cancelled, before + 1);
});

test('error statuses carry the server message', async () => {
  await assert.rejects(run(client, { job: 'no-such-job' }), (err) => {
    assert.equal(err.code, grpc.status.NOT_FOUND);
    assert.match(err.details, /no-such-job/);
    return true;
  });
  await assert.rejects(run(client, { command: ['/nonexistent/program'] }, { stdin: 'x' }), (err) => {
    assert.equal(err.code, grpc.status.FAILED_PRECONDITION);
    assert.match(err.details, /nonexistent/);
    return true;
  });
  await assert.rejects(run(client, { command: [] }), { code: grpc.status.INVALID_ARGUMENT });
  await assert.rejects(run(client, { job: 'cat', args: ['x'] }), { code: grpc.status.PERMISSION_DENIED });
  await assert.rejects(run(client, { command: ['sleep', '30'] }, { deadline: 300 }), { code: grpc.status.DEADLINE_EXCEEDED });
});
