//! The sandbox against real functions: Segment's contract, globals, limits.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;
use switchyard_functions::*;

fn code(src: &str) -> FunctionCode {
    FunctionCode::new("f", "function.js", src)
}

fn request(body: &str) -> RawRequest {
    RawRequest {
        method: "POST".into(),
        url: "https://hooks.example/functions/stigg?timestamp=123&x=a+b".into(),
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("X-Stigg-Signature".into(), "sig".into()),
        ],
        body: body.as_bytes().to_vec(),
    }
}

fn mock() -> FetchMode {
    FetchMode::Mock(Arc::new(vec![]))
}

fn run(src: &str, body: &str) -> SourceOutcome {
    run_source_once(
        &code(src),
        &request(body),
        &json!({"apiKey": "k"}),
        &Limits::default(),
        mock(),
    )
}

const STIGG: &str = r#"
async function onRequest(request, settings) {
  const body = request.json();
  if (!body.customer || !body.customer.id) {
    return;
  }
  Segment.track({
    event: body.type.split('.').join('_'),
    userId: body.customer.id,
    properties: body
  });
}
"#;

#[test]
fn the_stigg_function_runs_unmodified() {
    let out = run(
        STIGG,
        r#"{"type":"subscription.created","customer":{"id":"c-1"}}"#,
    );
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.messages.len(), 1);
    let m = &out.messages[0];
    assert_eq!(m["type"], "track");
    assert_eq!(m["event"], "subscription_created");
    assert_eq!(m["userId"], "c-1");
    assert_eq!(m["properties"]["customer"]["id"], "c-1");
    let none = run(STIGG, r#"{"type":"x.y"}"#);
    assert!(none.error.is_none() && none.messages.is_empty());
}

#[test]
fn request_interface_matches_segment() {
    let src = r#"
async function onRequest(request, settings) {
  Segment.identify({
    userId: 'u',
    traits: {
      text: request.text(),
      ct: request.headers.get('content-type'),
      sig: request.headers.get('X-STIGG-SIGNATURE'),
      missing: request.headers.get('nope'),
      ts: request.url.searchParams.get('timestamp'),
      x: request.url.searchParams.get('x'),
      path: request.url.pathname,
      key: settings.apiKey,
    }
  });
}"#;
    let raw = r#"{"b": 1, "a": [1.0, 2]}"#;
    let out = run(src, raw);
    assert!(out.error.is_none(), "{:?}", out.error);
    let t = &out.messages[0]["traits"];
    assert_eq!(t["text"], raw, "the body exactly as received");
    assert_eq!(t["ct"], "application/json");
    assert_eq!(t["sig"], "sig");
    assert_eq!(t["missing"], Value::Null);
    assert_eq!(t["ts"], "123");
    assert_eq!(t["x"], "a b");
    assert_eq!(t["path"], "/functions/stigg");
    assert_eq!(t["key"], "k");
}

#[test]
fn every_segment_helper_and_set() {
    let src = r#"
async function onRequest(request) {
  Segment.identify({ userId: 'u', traits: { a: 1 } });
  Segment.track({ userId: 'u', event: 'E' });
  Segment.page({ anonymousId: 'a', name: 'Home' });
  Segment.screen({ userId: 'u', name: 'Main' });
  Segment.group({ userId: 'u', groupId: 'g' });
  Segment.alias({ userId: 'u', previousId: 'p' });
  Segment.set({ collection: 'rooms', id: 42, properties: { size: 3 } });
}"#;
    let out = run(src, "{}");
    assert!(out.error.is_none(), "{:?}", out.error);
    let types: Vec<&str> = out
        .messages
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        ["identify", "track", "page", "screen", "group", "alias"]
    );
    assert_eq!(
        out.objects,
        vec![ObjectSet {
            collection: "rooms".into(),
            id: "42".into(),
            properties: json!({"size": 3})
        }]
    );
}

#[test]
fn a_missing_user_id_is_an_error_with_its_line() {
    let src = "async function onRequest(request) {\n  Segment.track({ event: 'E' });\n}\n";
    let out = run(src, "{}");
    let e = out.error.expect("an error");
    assert_eq!(e.name, "ValidationError");
    assert!(e.message.contains("userId or anonymousId"), "{}", e.message);
    assert_eq!(e.line, Some(2), "{e:?}");
    assert!(
        out.messages.is_empty(),
        "nothing is emitted when the function fails"
    );
}

#[test]
fn thrown_error_classes_keep_their_names() {
    for class in [
        "ValidationError",
        "InvalidEventPayload",
        "EventNotSupported",
        "RetryError",
        "DropEvent",
    ] {
        let src = format!("async function onRequest() {{ throw new {class}('bad payload'); }}");
        let e = run(&src, "{}").error.expect("error");
        assert_eq!(
            (e.name.as_str(), e.message.as_str(), e.kind),
            (class, "bad payload", ErrorKind::Thrown)
        );
        // The stack shows the function's frames, not the runtime's.
        assert!(e.stack.contains("function.js:1"), "{}", e.stack);
        assert!(
            e.stack
                .lines()
                .filter(|l| l.trim_start().starts_with("at "))
                .all(|l| l.contains("function.js")),
            "{}",
            e.stack
        );
    }
    let e = run("async function onRequest() { null.x; }", "{}")
        .error
        .unwrap();
    assert_eq!(e.name, "TypeError");
    let e = run("function onRequest( {", "{}").error.unwrap();
    assert_eq!(e.name, "SyntaxError");
    let e = run("const x = 1;", "{}").error.unwrap();
    assert!(e.message.contains("onRequest"), "{e:?}");
}

#[test]
fn the_legacy_form_runs() {
    let src = r#"
exports.processEvents = async (event) => {
  const body = event.payload.body;
  return {
    events: [{ type: 'track', event: body.kind, userId: event.payload.queryParameters.x, properties: { h: event.payload.headers['x-stigg-signature'] } }],
    objects: [{ collection: 'rooms', id: 'r1', properties: { n: 1 } }],
  };
};"#;
    let out = run(src, r#"{"kind":"Legacy"}"#);
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.messages[0]["event"], "Legacy");
    assert_eq!(out.messages[0]["userId"], "a b");
    assert_eq!(out.messages[0]["properties"]["h"], "sig");
    assert_eq!(out.objects[0].id, "r1");
}

#[test]
fn globals_of_segments_runtime() {
    let src = r#"
async function onRequest(request) {
  const crypto2 = require('crypto');
  const hmac = crypto.createHmac('sha1', 'Jefe').update('what do ya want for nothing?').digest('hex');
  const sha = crypto2.createHash('sha256').update('abc').digest('hex');
  const b = Buffer.from('héllo', 'utf8');
  const lodash = require('lodash');
  const xmlOut = xml({ a: [{ b: 'c & d' }] });
  const h = new Headers({ 'X-A': '1' }); h.append('x-a', '2');
  const u = new URL('https://a.example/p?q=1#f'); u.searchParams.set('r', '2');
  const waited = await new Promise((resolve) => setTimeout(() => resolve('later'), 5));
  const fd = new FormData(); fd.append('k', 'v');
  Segment.track({ userId: 'u', event: 'G', properties: {
    hmac, sha,
    b64: b.toString('base64'), hex: b.toString('hex'), back: Buffer.from(b.toString('base64'), 'base64').toString(),
    atob: atob(btoa('hi')),
    chunk: _.chunk([1, 2, 3], 2), same: lodash === _, get: _.get({ a: { b: 5 } }, 'a.b'),
    xml: xmlOut, headers: h.get('x-a'), url: u.href, waited, fd: fd.get('k'),
    uuid: crypto.randomUUID().length,
    classes: [typeof ValidationError, typeof EventNotSupported, typeof InvalidEventPayload, typeof Response, typeof Request, typeof URLSearchParams, typeof fetch],
  }});
  console.log('hello', { a: 1 });
  console.warn('careful');
}"#;
    let out = run(src, "{}");
    assert!(out.error.is_none(), "{:?}", out.error);
    let p = &out.messages[0]["properties"];
    assert_eq!(p["hmac"], "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    assert_eq!(
        p["sha"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(p["b64"], "aMOpbGxv");
    assert_eq!(p["hex"], "68c3a96c6c6f");
    assert_eq!(p["back"], "héllo");
    assert_eq!(p["atob"], "hi");
    assert_eq!(p["chunk"], json!([[1, 2], [3]]));
    assert_eq!(p["same"], true);
    assert_eq!(p["get"], 5);
    assert_eq!(p["xml"], "<a><b>c &amp; d</b></a>");
    assert_eq!(p["headers"], "1, 2");
    assert_eq!(p["url"], "https://a.example/p?q=1&r=2#f");
    assert_eq!(p["waited"], "later");
    assert_eq!(p["fd"], "v");
    assert_eq!(p["uuid"], 36);
    assert!(
        p["classes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t == "function"),
        "{p}"
    );
    assert_eq!(out.logs.len(), 2);
    assert_eq!(out.logs[0].message, "hello { a: 1 }");
    assert_eq!(out.logs[1].level, "warn");
}

/// Node's behaviour for what functions from Segment's library and its users
/// reach for beyond the basics (the expected values are Node 20's).
#[test]
fn node_apis_behave_as_in_node() {
    let src = r#"
async function onTrack(event) {
  const qs = require('querystring');
  const url = require('url');
  const b = Buffer.alloc(12);
  const end = b.writeUInt32BE(0xdeadbeef, 0);
  b.writeInt16LE(-2, end);
  b.writeDoubleBE(1.5, 4);
  let outOfRange = null;
  try { b.readUInt32LE(10); } catch (e) { outOfRange = e.code; }
  let badHash = null;
  try { crypto.createHash('nope'); } catch (e) { badHash = e.message; }
  const legacy = url.parse('https://user:pw@api.example.com:8443/v1/items?tag=a&tag=b#top', true);
  const u = new URL('https://a.example/x');
  u.pathname = '/a b/ü';
  const original = { when: new Date(0), list: [1, { deep: true }], map: new Map([['k', 1]]) };
  original.self = original;
  const copy = structuredClone(original);
  const controller = new AbortController();
  controller.abort();
  let aborted = null;
  try { await fetch('https://api.example.com/', { signal: controller.signal }); } catch (e) { aborted = e.name; }
  const res = await fetch('https://api.example.com/once');
  await res.text();
  let secondRead = null;
  try { await res.text(); } catch (e) { secondRead = e.name; }
  return {
    newBuffer: new Buffer('abc').toString('hex'),
    newBufferB64: new Buffer('aGk=', 'base64').toString(),
    indexOf: Buffer.from('abcdef').indexOf('cd'),
    includes: Buffer.from('abcdef').includes(Buffer.from('ef')),
    missing: Buffer.from('abcdef').indexOf('x'),
    written: b.toString('hex'),
    readBack: [b.readUInt32BE(0), b.readDoubleBE(4), b.readUint8(0)],
    outOfRange,
    badHash,
    stringify: qs.stringify({ tags: ['a', 'b'], q: 'x y', n: 1, o: {} }),
    parse: qs.parse('a=1&a=2&b=%20c+d'),
    escape: qs.escape('a b&c'),
    legacy: [legacy.protocol, legacy.auth, legacy.hostname, legacy.port, legacy.pathname, legacy.query.tag, legacy.hash, legacy.path],
    format: url.format({ protocol: 'https', hostname: 'h.example', pathname: '/p', query: { a: 'b c' } }),
    resolve: url.resolve('https://h.example/a/b', '../c'),
    pathname: u.href,
    canParse: [URL.canParse('https://x.example'), URL.canParse('nope')],
    text: [new TextDecoder().decode(new TextEncoder().encode('héllo')), new TextEncoder().encode('é').length],
    cloned: [copy.when instanceof Date, copy.list[1].deep, copy.map.get('k'), copy.self === copy, copy !== original],
    aborted,
    secondRead,
  };
}"#;
    let out = run_destination_once(
        &code(src),
        &json!({"type": "track", "event": "E", "userId": "u"}),
        &json!({}),
        &Limits::default(),
        mock(),
    );
    assert!(out.error.is_none(), "{:?}", out.error);
    let r = out.result.expect("a result");
    let expected = json!({
        "newBuffer": "616263",
        "newBufferB64": "hi",
        "indexOf": 2,
        "includes": true,
        "missing": -1,
        "written": "deadbeef3ff8000000000000",
        "readBack": [3735928559u32, 1.5, 222],
        "outOfRange": "ERR_OUT_OF_RANGE",
        "badHash": "Digest method not supported: nope",
        "stringify": "tags=a&tags=b&q=x%20y&n=1&o=",
        "parse": {"a": ["1", "2"], "b": " c d"},
        "escape": "a%20b%26c",
        "legacy": ["https:", "user:pw", "api.example.com", "8443", "/v1/items", ["a", "b"], "#top", "/v1/items?tag=a&tag=b"],
        "format": "https://h.example/p?a=b%20c",
        "resolve": "https://h.example/c",
        "pathname": "https://a.example/a%20b/%C3%BC",
        "canParse": [true, false],
        "text": ["héllo", 2],
        "cloned": [true, true, 1, true, true],
        "aborted": "AbortError",
        "secondRead": "TypeError",
    });
    for (key, want) in expected.as_object().unwrap() {
        assert_eq!(&r[key], want, "{key}");
    }
}

/// Signing a JWT for a Google service account, verifying a provider's
/// signature, gzip and `util`: what a function does with Node's modules.
#[test]
fn signatures_zlib_and_util_work_as_in_node() {
    let src = r#"
async function onTrack(event, settings) {
  const crypto = require('crypto');
  const zlib = require('zlib');
  const util = require('util');
  const b64url = (b) => b.toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
  const header = b64url(Buffer.from(JSON.stringify({ alg: 'RS256', typ: 'JWT' })));
  const claims = b64url(Buffer.from(JSON.stringify({ iss: 'sa@example.iam', aud: 'https://oauth2.example/token' })));
  const signer = crypto.createSign('RSA-SHA256');
  signer.update(header + '.' + claims);
  const jwt = header + '.' + claims + '.' + b64url(signer.sign(settings.privateKey));
  const verified = crypto.createVerify('RSA-SHA256').update(jwt.split('.').slice(0, 2).join('.'))
    .verify(settings.publicKey, Buffer.from(jwt.split('.')[2].replace(/-/g, '+').replace(/_/g, '/'), 'base64'));
  const known = crypto.sign('sha256', Buffer.from('payload'), { key: settings.privateKey }).toString('base64');
  const tampered = crypto.verify('sha256', Buffer.from('payloaD'), settings.publicKey, Buffer.from(known, 'base64'));
  const gz = zlib.gzipSync(JSON.stringify({ hello: 'world' }));
  let badHeader = null;
  try { new Headers({ 'bad header': 'x' }); } catch (e) { badHeader = e.name; }
  const h = new Headers(); h.append('Set-Cookie', 'a=1'); h.append('set-cookie', 'b=2');
  return {
    verified, known, tampered,
    gzipMagic: gz[0] === 0x1f && gz[1] === 0x8b,
    gunzipped: JSON.parse(zlib.gunzipSync(gz).toString()).hello,
    pbkdf2: crypto.pbkdf2Sync('password', 'salt', 2, 20, 'sha1').toString('hex'),
    format: util.format('%s has %d items: %j', 'cart', 3, { a: 1 }),
    promisified: await util.promisify((x, cb) => cb(null, x * 2))(21),
    badHeader,
    cookies: h.getSetCookie(),
  };
}"#;
    let key = |name: &str| {
        std::fs::read_to_string(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
    };
    let out = run_destination_once(
        &code(src),
        &json!({"type": "track", "event": "E", "userId": "u"}),
        &json!({"privateKey": key("rsa-pkcs8.pem"), "publicKey": key("rsa-public.pem")}),
        &Limits::default(),
        mock(),
    );
    assert!(out.error.is_none(), "{:?}", out.error);
    let r = out.result.expect("a result");
    // `printf payload | openssl dgst -sha256 -sign tests/keys/rsa-pkcs1.pem | base64`
    let openssl = "jmGBRz+d/SmVp5ecMWTsc15SWDAI6lme5qdLoboO61ajChd1VcFivcWavAJX/Gq7AYJ/FfuV/p4gxy7CTM/yu9M0wIPoLZQ5PhrvgHxXApICitxIDxr1wb5m8OKSCnVgYxvt/Gaez0IYHoIu9AopNITdyVF7im3/yU9rWP8aUD5dOrNyR5gJghKZsCfA9WQ9hCYyheaKfIHXFzopVyT6oCdGSrZ5hBxEZy1vsLbi9cLPikyBRFMWxryLO0so9otmSRyXo5bMdXN/wREMoOe9+HDIFxHOPW/u395h0FqRFB8ucsDwkVIDQ7ISFoOqJQEJYe2E8aBO0ITC2GIr9lFBUQ==";
    let expected = json!({
        "verified": true,
        "known": openssl,
        "tampered": false,
        "gzipMagic": true,
        "gunzipped": "world",
        "pbkdf2": "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957",
        "format": "cart has 3 items: {\"a\":1}",
        "promisified": 42,
        "badHeader": "TypeError",
        "cookies": ["a=1", "b=2"],
    });
    for (k, want) in expected.as_object().unwrap() {
        assert_eq!(&r[k], want, "{k}");
    }
}

/// `Intl` and the `toLocale…` methods, against Node 20's output for the
/// same expressions (`TZ=UTC`; the cases are evaluated one by one).
#[test]
fn intl_formats_numbers_dates_and_orders_strings_as_node_does() {
    let expected: serde_json::Map<String, Value> = serde_json::from_str(INTL_CASES).unwrap();
    let cases: Vec<&String> = expected.keys().collect();
    let src = format!(
        "const CASES = {};\nasync function onTrack() {{ const out = {{}}; for (const c of CASES) {{ try {{ out[c] = String((0, eval)(c)); }} catch (e) {{ out[c] = 'threw ' + e.name + ': ' + e.message; }} }} return out; }}",
        serde_json::to_string(&cases).unwrap()
    );
    let out = run_destination_once(
        &code(&src),
        &json!({"type": "track", "event": "E", "userId": "u"}),
        &json!({}),
        &Limits::default(),
        mock(),
    );
    assert!(out.error.is_none(), "{:?}", out.error);
    let got = out.result.expect("a result");
    for (case, want) in &expected {
        assert_eq!(&got[case], want, "{case}");
    }
}

const INTL_CASES: &str = r##"{"(1234567.891).toLocaleString('de-DE')": "1.234.567,891", "(1234.5).toLocaleString('en-US', {style: 'currency', currency: 'USD'})": "$1,234.50", "(-1234.5).toLocaleString('en-US', {style: 'currency', currency: 'USD'})": "-$1,234.50", "(1234.5).toLocaleString('de-DE', {style: 'currency', currency: 'EUR'})": "1.234,50 €", "new Intl.NumberFormat('en-US', {maximumFractionDigits: 2}).format(1.005)": "1.01", "JSON.stringify(new Intl.NumberFormat('en-US', {style: 'currency', currency: 'USD'}).formatToParts(-12.5))": "[{\"type\":\"minusSign\",\"value\":\"-\"},{\"type\":\"currency\",\"value\":\"$\"},{\"type\":\"integer\",\"value\":\"12\"},{\"type\":\"decimal\",\"value\":\".\"},{\"type\":\"fraction\",\"value\":\"50\"}]", "new Date(Date.UTC(2024, 4, 1, 12, 0, 5)).toLocaleString('en-US', {timeZone: 'America/New_York'})": "5/1/2024, 8:00:05 AM", "new Date(Date.UTC(2024, 4, 1, 12, 0, 5)).toLocaleString('en-GB', {timeZone: 'Europe/London'})": "01/05/2024, 13:00:05", "new Date(Date.UTC(2024, 4, 1, 12, 0, 5)).toLocaleTimeString('en-US', {timeZone: 'Asia/Kolkata', timeZoneName: 'short'})": "5:30:05 PM GMT+5:30", "new Intl.DateTimeFormat('en-US', {dateStyle: 'full', timeStyle: 'long', timeZone: 'America/Chicago'}).format(new Date(Date.UTC(2024, 4, 1, 12, 0, 5)))": "Wednesday, May 1, 2024 at 7:00:05 AM CDT", "new Intl.DateTimeFormat('en-US', {dateStyle: 'medium', timeStyle: 'short'}).format(new Date(Date.UTC(2024, 0, 9, 15, 4, 5)))": "Jan 9, 2024, 3:04 PM", "new Intl.DateTimeFormat('en-GB', {dateStyle: 'medium', timeStyle: 'short'}).format(new Date(Date.UTC(2024, 0, 9, 15, 4, 5)))": "9 Jan 2024, 15:04", "(() => { try { new Intl.DateTimeFormat('en-US', {timeZone: 'Mars/Base'}); return 'no throw'; } catch (e) { return e.name; } })()": "RangeError", "['C', 'a', 'b', 'B', 'é', 'e', 'f'].sort((x, y) => x.localeCompare(y)).join('')": "abBCeéf", "['item10', 'item2', 'item1'].sort(new Intl.Collator('en', {numeric: true}).compare).join(',')": "item1,item2,item10", "[1, 2, 3, 4, 11, 21, 22, 23, 112].map((n) => new Intl.PluralRules('en-US', {type: 'ordinal'}).select(n)).join(',')": "one,two,few,other,other,one,two,few,other", "new Intl.RelativeTimeFormat('en', {numeric: 'auto'}).format(-1, 'day')": "yesterday", "new Intl.ListFormat('en', {type: 'disjunction'}).format(['a', 'b'])": "a or b", "new Date(Date.UTC(2024, 4, 1, 12, 0, 5)).toLocaleDateString('de-DE')": "1.5.2024", "new Date(Date.UTC(2024, 4, 1, 12, 0, 5)).toLocaleDateString('ja-JP')": "2024/5/1", "(1234.5).toLocaleString('nl-NL', {style: 'currency', currency: 'EUR'})": "€ 1.234,50", "(1234.5).toLocaleString('fr-FR', {style: 'currency', currency: 'EUR'})": "1 234,50 €", "new Date(0).toString()": "Thu Jan 01 1970 00:00:00 GMT+0000 (Coordinated Universal Time)", "Intl.DateTimeFormat().resolvedOptions().timeZone": "UTC", "Intl.NumberFormat('en-US').format(1234) + (new Intl.NumberFormat() instanceof Intl.NumberFormat)": "1,234true", "new Date(Date.UTC(2024, 0, 1, 12, 0, 5)).toLocaleString('en-US', {timeZone: 'America/Los_Angeles'})": "1/1/2024, 4:00:05 AM", "(0.256).toLocaleString('fr-FR', {style: 'percent'})": "26 %"}"##;

/// `console.log` prints values as Node's `util.format` does (what
/// Segment's logs show); the expected lines are Node 20's.
#[test]
fn console_prints_values_as_node_does() {
    let cases: Vec<(&str, &str)> = vec![
        ("[{ a: 1, b: 'x', c: [1, 2, 3], d: { e: { f: { g: 1 } } } }]", "{ a: 1, b: 'x', c: [ 1, 2, 3 ], d: { e: { f: [Object] } } }"),
        ("[new Map([['k', 1], ['j', { x: 2 }]])]", "Map(2) { 'k' => 1, 'j' => { x: 2 } }"),
        ("[{ 'needs-quote': 1, ok_key: \"it's\" }]", "{ 'needs-quote': 1, ok_key: \"it's\" }"),
        ("['%s has %d items', 'cart', 3]", "cart has 3 items"),
        ("[Buffer.from('hello')]", "<Buffer 68 65 6c 6c 6f>"),
        ("[function named() {}, () => 1, class K {}]", "[Function: named] [Function (anonymous)] [class K]"),
        ("[{ long: 'x'.repeat(40), other: 'y'.repeat(30) }]", "{\n  long: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx',\n  other: 'yyyyyyyyyyyyyyyyyyyyyyyyyyyyyy'\n}"),
        ("[(() => { const o = { name: 'o' }; o.self = o; return o; })()]", "<ref *1> { name: 'o', self: [Circular *1] }"),
    ];
    let calls: String = cases
        .iter()
        .map(|(args, _)| format!("console.log(...{args});\n"))
        .collect();
    let src = format!("async function onTrack() {{\n{calls}}}");
    let out = run_destination_once(
        &code(&src),
        &json!({"type": "track", "event": "E", "userId": "u"}),
        &json!({}),
        &Limits::default(),
        mock(),
    );
    assert!(out.error.is_none(), "{:?}", out.error);
    let printed: Vec<&str> = out.logs.iter().map(|l| l.message.as_str()).collect();
    let expected: Vec<&str> = cases.iter().map(|(_, line)| *line).collect();
    assert_eq!(printed, expected);
}

#[test]
fn a_function_can_answer_the_request() {
    let src = r#"
async function onRequest(request) {
  const body = request.json();
  if (body.challenge) return new Response(body.challenge, { status: 200, headers: { 'Content-Type': 'text/plain' } });
  return { status: 202, body: { ok: true } };
}"#;
    let out = run(src, r#"{"challenge":"abc123"}"#);
    let answer = out.response.expect("an answer");
    assert_eq!(
        (answer.status, answer.body.as_slice()),
        (200, &b"abc123"[..])
    );
    assert!(answer
        .headers
        .contains(&("content-type".into(), "text/plain".into())));
    let out = run(src, "{}");
    let answer = out.response.expect("an answer");
    assert_eq!(answer.status, 202);
    assert_eq!(answer.body, br#"{"ok":true}"#);
    // Values of one name stay apart: joined, two cookies would read as one.
    let cookies = r#"
async function onRequest() {
  const headers = new Headers();
  headers.append('Set-Cookie', 'a=1; Path=/');
  headers.append('set-cookie', 'b=2');
  return new Response('', { status: 200, headers });
}"#;
    let answer = run(cookies, "{}").response.expect("an answer");
    let set: Vec<&str> = answer
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(set, ["a=1; Path=/", "b=2"], "{:?}", answer.headers);
}

#[test]
fn no_file_system_environment_or_process() {
    let src = r#"
async function onRequest() {
  const probes = {
    std: typeof std, os: typeof os, env: JSON.stringify(process.env),
    fs: (() => { try { require('fs'); return 'loaded'; } catch (e) { return e.code; } })(),
    host: typeof __host,
  };
  Segment.track({ userId: 'u', event: 'P', properties: probes });
}"#;
    let out = run(src, "{}");
    assert!(out.error.is_none(), "{:?}", out.error);
    let p = &out.messages[0]["properties"];
    assert_eq!(
        p,
        &json!({"std": "undefined", "os": "undefined", "env": "{}", "fs": "MODULE_NOT_FOUND", "host": "undefined"})
    );
}

#[test]
fn loops_and_stuck_promises_are_stopped() {
    let limits = Limits {
        timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let out = run_source_once(
        &code("async function onRequest() { while (true) {} }"),
        &request("{}"),
        &json!({}),
        &limits,
        mock(),
    );
    assert_eq!(out.error.unwrap().kind, ErrorKind::Timeout);
    let out = run_source_once(
        &code("async function onRequest() { await new Promise(() => {}); }"),
        &request("{}"),
        &json!({}),
        &limits,
        mock(),
    );
    let e = out.error.unwrap();
    assert_eq!(e.kind, ErrorKind::Timeout, "{e:?}");
    assert!(e.message.contains("never settles"));
    let out = run_source_once(
        &code("async function onRequest() { await Promise.resolve(); for (;;) {} }"),
        &request("{}"),
        &json!({}),
        &limits,
        mock(),
    );
    assert_eq!(out.error.unwrap().kind, ErrorKind::Timeout);
    let out = run_source_once(
        &code("async function onRequest() { await new Promise(r => setTimeout(r, 60000)); }"),
        &request("{}"),
        &json!({}),
        &limits,
        mock(),
    );
    assert_eq!(out.error.unwrap().kind, ErrorKind::Timeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_memory_bombs_do_not_take_the_pool_down() {
    let pool = Pool::new(2, FetchPolicy::default());
    let limits = Limits {
        timeout: Duration::from_secs(5),
        memory_bytes: 16 * 1024 * 1024,
        recycle_after: 1000,
    };
    let bombs = [
        "async function onRequest() { const a = []; for (;;) a.push(new Array(100000).fill(1)); }",
        "async function onRequest() { let s = 'x'; for (;;) s += s; }",
        "async function onRequest() { const o = {}; for (let i = 0; ; i++) o['k' + i] = { i, s: 'y'.repeat(100) }; }",
        "function f() { return f() + 1; } async function onRequest() { f(); }",
    ];
    let healthy = Arc::new(code(STIGG));
    for i in 0..300 {
        let bomb = Arc::new(FunctionCode::new("bomb", "bomb.js", bombs[i % bombs.len()]));
        let out = pool
            .run_source(bomb, &request("{}"), &json!({}), limits)
            .await;
        let e = out.error.expect("the bomb is stopped");
        assert!(
            matches!(
                e.kind,
                ErrorKind::Memory | ErrorKind::Thrown | ErrorKind::Timeout
            ),
            "{e:?}"
        );
        if i % 50 == 0 {
            let ok = pool
                .run_source(
                    healthy.clone(),
                    &request(r#"{"type":"a.b","customer":{"id":"c"}}"#),
                    &json!({}),
                    limits,
                )
                .await;
            assert!(ok.error.is_none(), "after {i} bombs: {:?}", ok.error);
        }
    }
    let ok = pool
        .run_source(
            healthy,
            &request(r#"{"type":"a.b","customer":{"id":"c"}}"#),
            &json!({}),
            limits,
        )
        .await;
    assert_eq!(ok.messages.len(), 1);
    pool.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_runtimes_are_reused_and_replaced_on_new_versions() {
    let pool = Pool::new(1, FetchPolicy::default());
    let v1 = Arc::new(FunctionCode::new("counter", "c.js", "let n = 0; async function onRequest() { n++; Segment.track({ userId: 'u', event: 'v1', properties: { n } }); }"));
    let mut last = 0;
    for _ in 0..5 {
        let out = pool
            .run_source(v1.clone(), &request("{}"), &json!({}), Limits::default())
            .await;
        last = out.messages[0]["properties"]["n"].as_i64().unwrap();
    }
    assert_eq!(last, 5, "one warm runtime served every call");
    let v2 = Arc::new(FunctionCode::new(
        "counter",
        "c.js",
        "async function onRequest() { Segment.track({ userId: 'u', event: 'v2' }); }",
    ));
    let out = pool
        .run_source(v2, &request("{}"), &json!({}), Limits::default())
        .await;
    assert_eq!(out.messages[0]["event"], "v2");
    pool.shutdown();
}

/// Writes an HTTP/1.1 answer with a JSON body, closing the connection.
fn answer_json(stream: &mut std::net::TcpStream, status: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
}

/// A one-shot HTTP server on loopback answering `body`.
fn local_server(body: &'static str) -> (u16, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 65536];
        let n = s.read(&mut buf).unwrap();
        let req = String::from_utf8_lossy(&buf[..n]).into_owned();
        answer_json(&mut s, "201 Created", body);
        req
    });
    (port, handle)
}

#[test]
fn fetch_is_real_and_private_addresses_are_refused_by_default() {
    let src = r#"
async function onRequest(request, settings) {
  const res = await fetch(settings.url, { method: 'POST', headers: { Authorization: 'Basic ' + btoa('a:b') }, body: JSON.stringify({ hi: 1 }) });
  const data = await res.json();
  Segment.track({ userId: 'u', event: 'F', properties: { status: res.status, ok: res.ok, data } });
}"#;
    let (port, server) = local_server(r#"{"created":true}"#);
    let url = format!("http://127.0.0.1:{port}/api");
    let denied = run_source_once(
        &code(src),
        &request("{}"),
        &json!({"url": url}),
        &Limits::default(),
        FetchMode::Live(Arc::new(FetchPolicy::default())),
    );
    let e = denied.error.expect("loopback refused");
    assert!(e.message.contains("private or loopback"), "{e:?}");
    let denied_name = run_source_once(
        &code(src),
        &request("{}"),
        &json!({"url": format!("http://localhost:{port}/api")}),
        &Limits::default(),
        FetchMode::Live(Arc::new(FetchPolicy::default())),
    );
    assert!(denied_name
        .error
        .expect("a name resolving to loopback is refused too")
        .message
        .contains("private or loopback"));

    let policy = FetchPolicy {
        allow: vec!["127.0.0.1".into()],
        deny: vec![],
    };
    let out = run_source_once(
        &code(src),
        &request("{}"),
        &json!({"url": url}),
        &Limits::default(),
        FetchMode::Live(Arc::new(policy)),
    );
    assert!(out.error.is_none(), "{:?}", out.error);
    let p = &out.messages[0]["properties"];
    assert_eq!(p["status"], 201);
    assert_eq!(p["data"]["created"], true);
    let seen = server.join().unwrap();
    assert!(seen.starts_with("POST /api"), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains("authorization: basic ytpi"),
        "{seen}"
    );
    assert!(seen.ends_with(r#"{"hi":1}"#), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains("content-type: text/plain;charset=utf-8"),
        "a string body without a type is sent as text, as node-fetch does: {seen}"
    );
}

/// A server on loopback that answers none of `n` requests until all `n`
/// have arrived: fetches made one after the other never get an answer.
fn rendezvous_server(n: usize) -> (u16, std::thread::JoinHandle<usize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let handle = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut waiting = Vec::new();
        while waiting.len() < n && std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    let mut buf = vec![0u8; 65536];
                    let read = s.read(&mut buf).unwrap();
                    let path = String::from_utf8_lossy(&buf[..read])
                        .split_whitespace()
                        .nth(1)
                        .unwrap_or_default()
                        .to_string();
                    waiting.push((s, path));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        let met = waiting.len();
        if met == n {
            for (mut s, path) in waiting {
                answer_json(&mut s, "200 OK", &format!(r#"{{"path":"{path}"}}"#));
            }
        }
        met
    });
    (port, handle)
}

#[test]
fn fetches_awaited_together_run_at_once() {
    let src = r#"
async function onTrack(event, settings) {
  const paths = ['/a', '/b', '/c', '/d'];
  const answers = await Promise.all(paths.map((p) => fetch(settings.base + p).then((r) => r.json())));
  return answers.map((a) => a.path);
}"#;
    let (port, server) = rendezvous_server(4);
    let limits = Limits {
        timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let out = run_destination_once(
        &code(src),
        &json!({"type": "track", "event": "E", "userId": "u"}),
        &json!({"base": format!("http://127.0.0.1:{port}")}),
        &limits,
        FetchMode::Live(Arc::new(FetchPolicy {
            allow: vec!["127.0.0.1".into()],
            deny: vec![],
        })),
    );
    assert_eq!(
        server.join().unwrap(),
        4,
        "all four requests were in flight at once"
    );
    assert_eq!(
        out.result.expect("answered"),
        json!(["/a", "/b", "/c", "/d"])
    );
}

#[test]
fn destination_handlers_by_type_and_mocked_fetch() {
    let src = r#"
async function onTrack(event, settings) {
  const res = await fetch('https://api.example.com/track', { method: 'POST', body: JSON.stringify({ e: event.event }), headers: { 'X-Key': settings.key } });
  console.log('sent', res.status);
  return { sent: event.event };
}
async function onBatch(events) { return events.map(() => ({ status: 200 })); }
"#;
    let c = code(src);
    let mocks = FetchMode::Mock(Arc::new(vec![MockResponse {
        url: "https://api.example.com/".into(),
        status: 202,
        headers: Default::default(),
        body: json!({"ok": 1}),
    }]));
    let out = run_destination_once(
        &c,
        &json!({"type": "track", "event": "Bought"}),
        &json!({"key": "k"}),
        &Limits::default(),
        mocks,
    );
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.result, Some(json!({"sent": "Bought"})));
    assert_eq!(out.requests.len(), 1);
    assert_eq!(out.requests[0].body, r#"{"e":"Bought"}"#);
    assert_eq!(
        out.requests[0].headers.get("x-key").map(String::as_str),
        Some("k")
    );
    assert_eq!(out.logs[0].message, "sent 202");
    // A type without a handler of its own goes to onBatch, as a batch of one.
    let out = run_destination_once(
        &c,
        &json!({"type": "identify", "userId": "u"}),
        &json!({}),
        &Limits::default(),
        mock(),
    );
    assert!(out.error.is_none() && out.batch, "{out:?}");
    assert_eq!(out.result, Some(json!([{"status": 200}])));
    let track_only = code("async function onTrack(event) {}");
    let out = run_destination_once(
        &track_only,
        &json!({"type": "identify", "userId": "u"}),
        &json!({}),
        &Limits::default(),
        mock(),
    );
    assert_eq!(out.error.unwrap().kind, ErrorKind::Unsupported);
    let out = run_destination_once(
        &c,
        &json!([{"type": "track"}, {"type": "track"}]),
        &json!({}),
        &Limits::default(),
        mock(),
    );
    assert_eq!(out.result, Some(json!([{"status": 200}, {"status": 200}])));
    assert_eq!(
        inspect(&c, &Limits::default()).unwrap(),
        ["onTrack", "onBatch"]
    );
}

/// A keep-alive HTTP server on loopback that closes a connection idle for
/// `idle` (as Node's does after 5 s); returns its port and the number of
/// connections it accepted.
fn keep_alive_server(idle: Duration) -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::spawn(move || {
                s.set_read_timeout(Some(idle)).unwrap();
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return, // idle too long (or gone): closed
                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                    }
                    while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        pending.drain(..end + 4);
                        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_does_not_reuse_a_connection_its_server_closed_while_idle() {
    let (port, accepted) = keep_alive_server(Duration::from_millis(700));
    let pool = Pool::new(
        1,
        FetchPolicy {
            allow: vec!["127.0.0.1".into()],
            deny: vec![],
        },
    );
    let f = Arc::new(FunctionCode::new(
        "getter",
        "getter.js",
        "async function onTrack(event, settings) { const r = await fetch(settings.url); if (await r.text() !== 'ok') throw new Error('bad answer'); }",
    ));
    let settings = json!({"url": format!("http://127.0.0.1:{port}/x")});
    let event = json!({"type": "track", "event": "E", "userId": "u"}).to_string();
    for round in 0..3 {
        if round > 0 {
            // Longer than the server keeps an idle connection.
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let out = pool
            .run_destination(f.clone(), event.clone(), &settings, Limits::default())
            .await;
        assert!(out.error.is_none(), "round {round}: {:?}", out.error);
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "a new connection after each idle close"
    );
    // Within the server's idle time, the connection is reused.
    let out = pool
        .run_destination(f.clone(), event.clone(), &settings, Limits::default())
        .await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    pool.shutdown();
}

#[test]
fn a_body_at_the_2_mb_limit_fits_the_default_memory_cap() {
    // JSON of many small objects, as webhook exports send.
    let mut json_body = String::from("{\"items\":[");
    let mut i = 0;
    while json_body.len() < 2 * 1024 * 1024 - 64 {
        json_body.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item {i}\",\"ok\":true}},"
        ));
        i += 1;
    }
    json_body.pop();
    json_body.push_str("]}");
    assert!(json_body.len() <= 2 * 1024 * 1024);
    let parsed = run(
        "async function onRequest(request) { const b = request.json(); Segment.track({ userId: 'u', event: 'Got', properties: { n: b.items.length } }); }",
        &json_body,
    );
    assert!(parsed.error.is_none(), "{:?}", parsed.error);
    assert_eq!(parsed.messages[0]["properties"]["n"], i);

    let text_body = "x".repeat(2 * 1024 * 1024);
    for src in [
        "async function onRequest(request) { Segment.track({ userId: 'u', event: 'Got' }); }",
        "async function onRequest(request) { Segment.track({ userId: 'u', event: 'Got', properties: { n: request.text().length } }); }",
        "async function onRequest(request) { Segment.track({ userId: 'u', event: 'Got', properties: { n: request.arrayBuffer().byteLength } }); }",
    ] {
        let out = run(src, &text_body);
        assert!(out.error.is_none(), "{src}: {:?}", out.error);
    }
    let legacy = run(
        "exports.processEvents = async (event) => ({ events: [{ type: 'track', userId: 'u', event: 'Got', properties: { n: event.payload.body.items.length } }] })",
        &json_body,
    );
    assert!(legacy.error.is_none(), "{:?}", legacy.error);
}

#[test]
fn running_out_of_memory_is_a_memory_error_whatever_the_function_throws_or_catches() {
    // At the cap QuickJS may not even build its error (it throws `null`),
    // and a function may catch what it gets: either way, as a Node process
    // would have died, the invocation ran out of memory.
    for src in [
        "async function onTrack() { await null; const a = []; try { for (;;) a.push(new Array(100000).fill(1)); } catch (e) { return [String(e), a.length]; } }",
        "async function onTrack() { await null; const a = []; for (;;) a.push(new Array(100000).fill(1)); }",
        "async function onTrack() { const a = []; for (;;) a.push('x'.repeat(100000) + a.length); }",
    ] {
        let out = run_destination_once(
            &code(src),
            &json!({"type": "track", "event": "E", "userId": "u"}),
            &json!({}),
            &Limits {
                memory_bytes: 16 << 20,
                ..Limits::default()
            },
            mock(),
        );
        let e = out.error.expect("out of memory");
        assert_eq!(e.kind, ErrorKind::Memory, "{src}: {e:?}");
    }
}
