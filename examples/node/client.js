#!/usr/bin/env node
// A forkpool client in Node.js, with @grpc/grpc-js and @grpc/proto-loader: the contract is loaded from
// ../../proto/forkpool/v1/forkpool.proto at start-up, so it always matches the server.
//
// run() does what hand-written streaming clients tend to get wrong (stdin half-close, output after stdin EOF,
// cancellation on disconnect):
// - stdin is written with back-pressure (a job that does not read holds the writer, not the memory), then
//   closed with `close_stdin` (EOF), while the request stream stays open until the job's end;
// - output keeps being read after EOF, until the one `exited` event;
// - an AbortSignal cancels the call, and the server kills the job with every process it started.
//
// Usage: node client.js [ADDRESS]     (default 127.0.0.1:50051)
'use strict';

const path = require('node:path');
const { once } = require('node:events');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO = path.join(__dirname, '..', '..', 'proto', 'forkpool', 'v1', 'forkpool.proto');
const STDIN_CHUNK = 64 * 1024;

/** The generated service constructor (forkpool.v1.Executor). */
function loadExecutor() {
  const definition = protoLoader.loadSync(PROTO, {
    keepCase: true, // field names as in the proto: close_stdin, job_id, wall_time...
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true, // `msg` / `event` / `status` name the member of a oneof that is set
  });
  return grpc.loadPackageDefinition(definition).forkpool.v1.Executor;
}

/** A client of the Executor service at `address` (plaintext unless credentials are given). */
function connect(address, credentials = grpc.credentials.createInsecure()) {
  const Executor = loadExecutor();
  return new Executor(address, credentials);
}

function seconds(duration) {
  return duration ? Number(duration.seconds) + duration.nanos / 1e9 : 0;
}

/**
 * Runs one job to its end.
 *
 * @param client  from connect()
 * @param start   a StartJob: {job, args} or {command}, and optionally env, timeout, terminal, inputs, outputs
 * @param options stdin: a Buffer, a string or an (async) iterable of chunks (EOF follows it; none: EOF at once);
 *                signal: an AbortSignal that cancels the job; deadline: the call's deadline (a Date or ms);
 *                onEvent: called with every response ({event: 'started', started: {...}}, ...)
 * @returns {Promise<{exitCode, signal, reason, stdout, stderr, pid, jobId, wallTime, reaped}>}; rejects with
 *          the gRPC error on an error status (err.code is a grpc.status, err.details the server's message),
 *          or with an AbortError when the signal aborted the call.
 */
function run(client, start, { stdin, signal, deadline, onEvent } = {}) {
  return new Promise((resolve, reject) => {
    if (signal && signal.aborted) {
      reject(signal.reason);
      return;
    }
    const callOptions = deadline === undefined ? {} : { deadline: typeof deadline === 'number' ? Date.now() + deadline : deadline };
    const call = client.Execute(callOptions);
    const stdout = [];
    const stderr = [];
    let started = null;
    let exited = null;
    let settled = false;

    const settle = (fn, value) => {
      if (!settled) {
        settled = true;
        if (signal) signal.removeEventListener('abort', onAbort);
        fn(value);
      }
    };
    const onAbort = () => {
      call.cancel(); // the server kills the job's whole tree
      settle(reject, signal.reason);
    };
    if (signal) signal.addEventListener('abort', onAbort, { once: true });

    call.on('data', (response) => {
      if (onEvent) onEvent(response);
      switch (response.event) {
        case 'started': started = response.started; break;
        case 'stdout': stdout.push(response.stdout); break;
        case 'stderr': stderr.push(response.stderr); break;
        case 'exited': exited = response.exited; break;
        default: break; // queued, output files
      }
    });
    call.on('error', (err) => settle(reject, err)); // an error status (or our own cancel)
    call.on('end', () => {
      call.end(); // the response stream is over: close ours too
      if (!exited) {
        settle(reject, new Error('the server ended the call without an exit status'));
        return;
      }
      settle(resolve, {
        exitCode: exited.status === 'code' ? exited.code : null,
        signal: exited.status === 'signal' ? exited.signal : null,
        reason: exited.reason,
        stdout: Buffer.concat(stdout),
        stderr: Buffer.concat(stderr),
        pid: started ? started.pid : 0,
        jobId: started ? started.job_id : '',
        wallTime: seconds(exited.wall_time),
        reaped: exited.reaped,
      });
    });

    // The request side: start, stdin with back-pressure, then EOF; the stream stays open until the end.
    (async () => {
      call.write({ start });
      for await (const chunk of chunks(stdin)) {
        if (settled) return;
        if (!call.write({ stdin: chunk })) await once(call, 'drain');
      }
      if (!settled) call.write({ close_stdin: {} });
    })().catch((err) => {
      call.cancel();
      settle(reject, err);
    });
  });
}

/**
 * A stdin source as Buffers of at most STDIN_CHUNK bytes. The pieces of a synchronous iterable are all there
 * at once: they go out gathered into large messages, never one tiny message per piece (a flood of tiny HTTP/2
 * frames, which servers answer by closing the whole connection with ENHANCE_YOUR_CALM). The pieces of an
 * async iterable go out as they come.
 */
async function* chunks(stdin) {
  if (stdin === undefined || stdin === null) return;
  if (typeof stdin === 'string' || Buffer.isBuffer(stdin)) stdin = [stdin];
  const gather = typeof stdin[Symbol.asyncIterator] !== 'function';
  let pieces = [];
  let size = 0;
  for await (const piece of stdin) {
    const buffer = Buffer.from(piece);
    pieces.push(buffer);
    size += buffer.length;
    if (size >= STDIN_CHUNK || !gather) {
      const all = Buffer.concat(pieces, size);
      const whole = gather ? all.length - (all.length % STDIN_CHUNK) : all.length;
      for (let i = 0; i < whole; i += STDIN_CHUNK) yield all.subarray(i, Math.min(i + STDIN_CHUNK, whole));
      pieces = whole < all.length ? [all.subarray(whole)] : [];
      size = all.length - whole;
    }
  }
  if (size > 0) yield Buffer.concat(pieces, size);
}

/** The server's catalog and status, as promises. */
function listJobs(client) {
  return new Promise((resolve, reject) => client.ListJobs({}, (err, res) => (err ? reject(err) : resolve(res))));
}
function getStatus(client) {
  return new Promise((resolve, reject) => client.GetStatus({}, (err, res) => (err ? reject(err) : resolve(res))));
}

async function main() {
  const address = process.argv[2] || '127.0.0.1:50051';
  const client = connect(address);
  try {
    const catalog = await listJobs(client);
    console.log('catalog:', catalog.jobs.map((j) => j.name).join(', '));

    const echo = await run(client, { job: 'echo', args: ['hello', 'from', 'node'] });
    console.log(`echo: ${echo.stdout.toString().trim()} | exit code ${echo.exitCode}`);

    const cat = await run(client, { job: 'cat' }, { stdin: ['streamed ', 'through ', 'stdin\n'] });
    console.log(`cat: ${cat.stdout.toString().trim()} | exit code ${cat.exitCode}`);

    try {
      await run(client, { job: 'no-such-job' });
    } catch (err) {
      console.log(`error: ${grpc.status[err.code]}: ${err.details}`);
    }

    const controller = new AbortController();
    const sleeper = run(client, { job: 'sleep', args: ['1000'] }, {
      signal: controller.signal,
      onEvent: (r) => { if (r.event === 'started') controller.abort(); },
    });
    await sleeper.catch((err) => console.log(`cancelled: ${err.name}`));

    const status = await getStatus(client);
    console.log(`status: started ${status.started_total}, finished ${status.finished_total}, cancelled ${status.cancelled_total}`);
    console.log('ok');
  } finally {
    client.close();
  }
}

module.exports = { PROTO, loadExecutor, connect, run, listJobs, getStatus, grpc };

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
