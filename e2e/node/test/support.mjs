// Shared e2e helpers: start the real allot-server binary on free local ports, ask it for the
// native /v1/allocate answer, and the units and flags every test walks through.
//
// The binary comes from ALLOT_SERVER_BIN (default: target/debug/allot-server of the
// repository). Each server gets explicit --http-addr/--grpc-addr/--mgmt-addr ports on
// 127.0.0.1 and is ready once /readyz on the management port answers 200.

import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
export const ADMIN_TOKEN = 'e2e-admin-token';
export const DEMO = readFileSync(resolve(REPO, 'server/src/demo.yaml'), 'utf8');

/**
 * `n` distinct ports that were free a moment ago: all listen on 0 at once (so no two are the
 * same), then close.
 */
export async function freePorts(n) {
  const listeners = await Promise.all(Array.from({ length: n }, () => new Promise((ok, fail) => {
    const s = createServer();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => ok(s));
  })));
  const ports = listeners.map((s) => s.address().port);
  await Promise.all(listeners.map((s) => new Promise((ok) => s.close(ok))));
  return ports;
}

/** Attempts at starting a server whose ports another process took first. */
const START_ATTEMPTS = 3;

/** POST `body` as JSON; resolves to { status, headers, body } with the body decoded. */
export async function postJson(url, body, headers = {}) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, body: text ? JSON.parse(text) : {} };
}

/** One running allot-server process. */
export class Server {
  static async start(...extra) {
    const binary = process.env.ALLOT_SERVER_BIN ?? resolve(REPO, 'target/debug/allot-server');
    if (!existsSync(binary)) {
      throw new Error(`server binary ${binary} not found; build it with cargo build -p allot-server`);
    }
    for (let attempt = 1; ; attempt++) {
      const s = await Server.spawn(binary, extra);
      try {
        await s.waitReady();
        return s;
      } catch (e) {
        // Between freePorts closing a port and the server binding it, another process may
        // take it: start again on new ports.
        if (attempt < START_ATTEMPTS && s.output.includes('Address already in use')) continue;
        throw e;
      }
    }
  }

  static async spawn(binary, extra) {
    const s = new Server();
    [s.httpPort, s.grpcPort, s.mgmtPort] = await freePorts(3);
    s.output = '';
    s.proc = spawn(
      binary,
      [
        '--http-addr', `127.0.0.1:${s.httpPort}`,
        '--grpc-addr', `127.0.0.1:${s.grpcPort}`,
        '--mgmt-addr', `127.0.0.1:${s.mgmtPort}`,
        ...extra,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    s.exited = new Promise((ok) => s.proc.once('exit', ok));
    for (const stream of [s.proc.stdout, s.proc.stderr]) {
      stream.on('data', (chunk) => { s.output += chunk; });
    }
    return s;
  }

  get http() { return `http://127.0.0.1:${this.httpPort}`; }
  get mgmt() { return `http://127.0.0.1:${this.mgmtPort}`; }

  async waitReady(timeoutMs = 20000) {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.proc.exitCode !== null) {
        throw new Error(`allot-server exited early:\n${this.output}`);
      }
      try {
        const res = await fetch(`${this.mgmt}/readyz`, { signal: AbortSignal.timeout(1000) });
        if (res.status === 200) return;
      } catch {
        // Not listening yet.
      }
      await new Promise((ok) => setTimeout(ok, 50));
    }
    await this.stop();
    throw new Error(`allot-server not ready within ${timeoutMs} ms:\n${this.output}`);
  }

  /** The native /v1/allocate answer for `context`. */
  async native(context) {
    const { status, body } = await postJson(`${this.http}/v1/allocate`, { context });
    if (status !== 200) throw new Error(`/v1/allocate: ${status} ${JSON.stringify(body)}`);
    return body;
  }

  /** Replaces the config through the admin API. */
  async putConfig(yaml) {
    const res = await fetch(`${this.mgmt}/admin/config`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/yaml' },
      body: yaml,
      signal: AbortSignal.timeout(5000),
    });
    return res.status;
  }

  async stop() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGTERM');
      const killer = setTimeout(() => this.proc.kill('SIGKILL'), 15000);
      await this.exited;
      clearTimeout(killer);
    }
  }
}

/**
 * Units and attributes that reach every kind of decision in the demo config: experiment
 * cells in all three layers, holdouts, rules, rollouts by member and by device (the same as
 * the Python e2e's).
 */
export function contexts() {
  const out = [];
  for (let i = 0; i < 12; i++) {
    const attrs = { country: ['US', 'SE', 'CA', 'DE'][i % 4] };
    if (i % 3 === 0) Object.assign(attrs, { platform: 'tv', app_version: '5.1.0', device_id: `d-${i}` });
    if (i % 4 === 1) attrs.tenure_months = 30;
    out.push([`m-${i}`, attrs]);
  }
  return out;
}

/** [flag key, OpenFeature type, default value] for every type of the demo config. */
export const FLAGS = [
  ['prefetch', 'Boolean', false],
  ['search.new-ranker', 'Boolean', false],
  ['legacy-player', 'Boolean', true],
  ['artwork-style', 'String', 'fallback'],
  ['tv-theme', 'String', 'fallback'],
  ['row-count', 'Number', -1],
  ['checkout.retry-limit', 'Number', -1],
  ['buffer-ratio', 'Number', -1.5],
  ['discount-rate', 'Number', -1.5],
  ['abr', 'Object', {}],
];

/** `client.get<Kind>Details(key, default, context)`. */
export function details(client, kind, key, defaultValue, context) {
  return client[`get${kind}Details`](key, defaultValue, context);
}
