// A webhook receiver for end-to-end tests. It verifies X-Signature exactly as
// the Segment Webhooks documentation's sample code does (HMAC-SHA1 of
// JSON.stringify(req.body), or of the first element for a batch), and
// Standard Webhooks signatures. Node's standard library only.
//
//   node receiver.js            prints "PORT <n>" once listening on 127.0.0.1
//   env RECEIVER_SECRET         the shared secret to verify with
//
// POST /hook/<name>            records the request, answers per its behaviour
// POST /_control/<name>        {"status": 500, "times": 2, "retryAfter": "1", "delayMs": 0}
//                              the next `times` requests (-1 = all) get `status`
//                              (0 = hang without answering), then 200
// GET  /_received/<name>       the recorded requests of <name>
// POST /_reset                 forget everything
'use strict';
const http = require('http');
const https = require('https');
const fs = require('fs');
const crypto = require('crypto');

const secret = process.env.RECEIVER_SECRET || '';
const received = {};
const behaviour = {};

function verifySegment(headers, body) {
  const signature = headers['x-signature'];
  if (!signature) return null;
  const signed = Array.isArray(body) ? body[0] : body;
  const digest = crypto
    .createHmac('sha1', secret)
    .update(Buffer.from(JSON.stringify(signed), 'utf-8'))
    .digest('hex');
  return signature === digest;
}

function verifyStandard(headers, raw) {
  const sig = headers['webhook-signature'];
  if (!sig) return null;
  let key = Buffer.from(secret, 'utf-8');
  if (secret.startsWith('whsec_')) key = Buffer.from(secret.slice(6), 'base64');
  const content = `${headers['webhook-id']}.${headers['webhook-timestamp']}.${raw}`;
  const expected = 'v1,' + crypto.createHmac('sha256', key).update(content).digest('base64');
  return sig.split(' ').includes(expected);
}

// RECEIVER_TLS_CERT / RECEIVER_TLS_KEY: serve HTTPS with that certificate.
const tls = process.env.RECEIVER_TLS_CERT
  ? { cert: fs.readFileSync(process.env.RECEIVER_TLS_CERT), key: fs.readFileSync(process.env.RECEIVER_TLS_KEY) }
  : null;
const handler = (req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const raw = Buffer.concat(chunks).toString('utf-8');
    const url = new URL(req.url, 'http://x');
    const [, kind, name = ''] = url.pathname.split('/');
    const reply = (status, obj, headers = {}) => {
      res.writeHead(status, Object.assign({ 'content-type': 'application/json' }, headers));
      res.end(JSON.stringify(obj));
    };
    if (kind === '_reset') {
      for (const k of Object.keys(received)) delete received[k];
      for (const k of Object.keys(behaviour)) delete behaviour[k];
      return reply(200, { ok: true });
    }
    if (kind === '_control') {
      behaviour[name] = JSON.parse(raw || '{}');
      return reply(200, { ok: true });
    }
    if (kind === '_received') {
      return reply(200, received[name] || []);
    }
    if (kind !== 'hook' || req.method !== 'POST') return reply(404, { error: 'unknown path' });

    let body = null;
    let parsed = true;
    try { body = JSON.parse(raw); } catch (e) { parsed = false; }
    const b = behaviour[name];
    let status = 200;
    if (b && b.times !== 0) {
      status = b.status;
      if (b.times > 0) b.times -= 1;
    }
    const record = {
      at: Date.now(),
      status,
      headers: req.headers,
      raw,
      parsed,
      segmentSignatureValid: parsed ? verifySegment(req.headers, body) : false,
      standardSignatureValid: verifyStandard(req.headers, raw),
    };
    (received[name] = received[name] || []).push(record);
    if (status === 0) return; // hang: never answer
    const headers = {};
    if (b && b.retryAfter) headers['retry-after'] = b.retryAfter;
    const answer = () => reply(status, { status }, headers);
    if (b && b.delayMs) setTimeout(answer, b.delayMs); else answer();
  });
};
// With TLS, webhooks arrive over HTTPS and the test's control routes stay on
// plain HTTP (a second port).
const server = http.createServer(handler);
const tlsServer = tls ? https.createServer(tls, handler) : null;
server.keepAliveTimeout = 65000;
server.listen(0, '127.0.0.1', () => {
  if (!tlsServer) {
    process.stdout.write(`PORT ${server.address().port}\n`);
    return;
  }
  tlsServer.listen(0, '127.0.0.1', () => {
    process.stdout.write(`PORT ${server.address().port} TLSPORT ${tlsServer.address().port}\n`);
  });
});
process.on('SIGTERM', () => process.exit(0));
// The test harness holds our stdin (and says so): when it goes away, so do
// we. Run by hand (`node receiver.js &`), stdin is left alone.
if (process.env.RECEIVER_EXIT_WITH_STDIN === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
