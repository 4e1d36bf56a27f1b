//! Globals and packages as Segment's runtime has them (Node with its npm
//! packages): what a function computes offline must match. Expected values
//! were taken from Node 20 with the packages Segment preinstalls.

use serde_json::{json, Value};
use std::sync::Arc;
use switchyard_functions::*;

fn run_track(src: &str, event: Value) -> DestinationOutcome {
    run_destination_once(
        &FunctionCode::new("f", "function.js", src),
        &event,
        &json!({}),
        &Limits::default(),
        FetchMode::Mock(Arc::new(vec![])),
    )
}

/// The result of `onTrack` in `src`, which must not fail.
fn result(src: &str) -> Value {
    let out = run_track(src, json!({"type": "track", "event": "E", "userId": "u"}));
    assert!(out.error.is_none(), "{:?}", out.error);
    out.result.expect("a result")
}

#[test]
fn btoa_and_atob_are_the_npm_packages_and_never_throw() {
    let out = result(
        r#"
async function onTrack() {
  return {
    global: btoa('Purchase ✓ café 😀'),
    required: require('btoa')('Purchase ✓ café 😀'),
    junk: atob('a$b'),
    requiredJunk: require('atob')('a$b'),
    url: atob('eyJ4IjoxfQ'),
    latin1: atob('Y2Fm6Q=='),
    buffer: btoa(Buffer.from([0xff, 0x00])),
  };
}"#,
    );
    assert_eq!(
        out,
        json!({
            "global": "UHVyY2hhc2UgEyBjYWbpID0A",
            "required": "UHVyY2hhc2UgEyBjYWbpID0A",
            "junk": "i",
            "requiredJunk": "i",
            "url": "{\"x\":1}",
            "latin1": "café",
            "buffer": "/wA=",
        })
    );
}

#[test]
fn form_data_is_the_form_data_package() {
    let out = result(
        r#"
async function onTrack() {
  const FormData = require('form-data');
  const f = new FormData();
  f.append('file', Buffer.from('id\n1'), { filename: 'dir/users.csv', contentType: 'text/csv' });
  f.append('n', 5);
  f.append('raw', Buffer.from('x'));
  f.append('doc', 'hello', 'a.json');
  const b = f.getBoundary();
  const res = await fetch('https://api.example.com/upload', { method: 'POST', body: f });
  return {
    boundary: /^-{26}\d{24}$/.test(b),
    body: f.getBuffer().toString().split(b).join('BOUND'),
    length: f.getLengthSync() === f.getBuffer().length,
    headers: f.getHeaders({ 'X-A': '1' })['content-type'] === 'multipart/form-data; boundary=' + b,
    extra: f.getHeaders({ 'X-A': '1' })['x-a'],
    global: new globalThis.FormData() instanceof FormData,
  };
}"#,
    );
    assert_eq!(
        out,
        json!({
            "boundary": true,
            "body": "--BOUND\r\nContent-Disposition: form-data; name=\"file\"; filename=\"users.csv\"\r\nContent-Type: text/csv\r\n\r\nid\n1\r\n--BOUND\r\nContent-Disposition: form-data; name=\"n\"\r\n\r\n5\r\n--BOUND\r\nContent-Disposition: form-data; name=\"raw\"\r\nContent-Type: application/octet-stream\r\n\r\nx\r\n--BOUND\r\nContent-Disposition: form-data; name=\"doc\"; filename=\"a.json\"\r\nContent-Type: application/json\r\n\r\nhello\r\n--BOUND--\r\n",
            "length": true,
            "headers": true,
            "extra": "1",
            "global": true,
        })
    );
}

#[test]
fn a_form_sent_by_fetch_is_typed_as_node_fetch_types_it() {
    let out = run_track(
        r#"
async function onTrack() {
  const f = new FormData();
  f.append('a', '1');
  await fetch('https://api.example.com/upload', { method: 'POST', body: f });
  return f.getBoundary();
}"#,
        json!({"type": "track", "event": "E", "userId": "u"}),
    );
    let boundary = out.result.expect("a result");
    let sent = &out.requests[0];
    assert_eq!(
        sent.headers.get("content-type").map(String::as_str),
        Some(
            format!(
                "multipart/form-data;boundary={}",
                boundary.as_str().unwrap()
            )
            .as_str()
        )
    );
}

#[test]
fn segment_calls_keep_only_the_fields_segments_runtime_keeps() {
    let out = run_source_once(
        &FunctionCode::new(
            "f",
            "function.js",
            r#"
async function onRequest() {
  const extra = { foo: 'bar', channel: 'server', traits: { t: 1 }, properties: { a: 1 } };
  Segment.track({ event: 'E', userId: 'u', ...extra, context: { ip: '1.2.3.4' }, timestamp: '2024-01-01T00:00:00Z' });
  Segment.identify({ userId: 'u', ...extra, anonymousId: '' });
  Segment.page({ anonymousId: 'a', name: 'Home', ...extra, integrations: { All: false } });
  Segment.screen({ userId: 'u', name: '', ...extra, messageId: 'm-1' });
  Segment.group({ userId: 'u', groupId: 'g', ...extra, sentAt: '2024-01-01T00:00:00Z' });
  Segment.alias({ userId: 'u', previousId: 'p', ...extra });
  Segment.track({ event: 'F', userId: 'u', properties: null });
}"#,
        ),
        &RawRequest {
            method: "POST".into(),
            url: "https://hooks.example/functions/f".into(),
            headers: vec![],
            body: b"{}".to_vec(),
        },
        &json!({}),
        &Limits::default(),
        FetchMode::Mock(Arc::new(vec![])),
    );
    assert!(out.error.is_none(), "{:?}", out.error);
    // Key order as Segment's runtime builds them: type, the call's own
    // fields, then the common ones.
    let texts: Vec<String> = out.messages.iter().map(|m| m.to_string()).collect();
    assert_eq!(
        texts,
        [
            r#"{"type":"track","event":"E","properties":{"a":1},"userId":"u","context":{"ip":"1.2.3.4"},"timestamp":"2024-01-01T00:00:00Z"}"#,
            r#"{"type":"identify","traits":{"t":1},"userId":"u"}"#,
            r#"{"type":"page","name":"Home","properties":{"a":1},"anonymousId":"a","integrations":{"All":false}}"#,
            r#"{"type":"screen","properties":{"a":1},"userId":"u","messageId":"m-1"}"#,
            r#"{"type":"group","groupId":"g","traits":{"t":1},"userId":"u","sentAt":"2024-01-01T00:00:00Z"}"#,
            r#"{"type":"alias","previousId":"p","userId":"u"}"#,
            r#"{"type":"track","event":"F","userId":"u"}"#,
        ]
    );
}

#[test]
fn the_error_line_of_an_error_subclass_is_where_it_was_thrown() {
    let src = r#"class ApiError extends Error {
  constructor(message) { super(message); this.name = 'ApiError'; }
}
class NotFound extends ApiError {}
async function onTrack(event) {
  if (event.properties.deep) throw new NotFound('missing');
  throw new ApiError('email is required');
}"#;
    for (deep, line, name) in [(false, 7, "ApiError"), (true, 6, "ApiError")] {
        let out = run_track(
            src,
            json!({"type": "track", "event": "E", "userId": "u", "properties": {"deep": deep}}),
        );
        let e = out.error.expect("an error");
        assert_eq!(e.name, name);
        assert_eq!(e.line, Some(line), "{e:?}");
    }
}

#[test]
fn small_node_apis_behave_as_node() {
    let out = result(
        r#"
async function onTrack() {
  const crypto = require('crypto');
  const util = require('util');
  const h = crypto.createHash('sha256').update('a');
  const copy = h.copy();
  const first = h.digest('hex');
  let twice;
  try { h.digest('hex'); } catch (e) { twice = e.message; }
  let hmacKey, hashData;
  try { crypto.createHmac('sha256', undefined); } catch (e) { hmacKey = e.message; }
  try { crypto.createHash('sha256').update(5); } catch (e) { hashData = e.message; }
  const t = setTimeout(() => {}, 1);
  const timer = [typeof t, typeof t.unref, t.unref() === t, t.hasRef(), t.ref().hasRef()];
  clearTimeout(t);
  return {
    alloc: [Buffer.alloc(5, 'ab').toString(), Buffer.alloc(4, 'YWI=', 'base64').toString(), Buffer.alloc(3, 0x41).toString(), Buffer.alloc(2, '').toString('hex')],
    fill: Buffer.from('xxxxx').fill('yz', 1).toString(),
    copy: copy.update('b').digest('hex'),
    sameAsCopy: first === crypto.createHash('sha256').update('a').digest('hex'),
    twice,
    bogus: Buffer.isBuffer(crypto.createHash('md5').update('a').digest('bogus')),
    hmacKey,
    hashData,
    timer,
    inspect: [util.inspect({ a: { b: { c: { d: {} } } } }, { depth: 0 }), util.inspect({ a: { b: { c: { d: {} } } } }, { depth: null })],
    format: [util.format('%o', [1, [2]]), util.format('%c a %s', 'x', 'y')],
    columns: [util.inspect(['a', 'b', 'c', 'd', 'e', 'f', 'g']), util.inspect(Array.from({ length: 27 }, (_, i) => i + 1))],
    statusText: [new Response('{}', { status: 201 }).statusText, new Response('', { status: 404 }).statusText],
  };
}"#,
    );
    assert_eq!(
        out,
        json!({
            "alloc": ["ababa", "abab", "AAA", "0000"],
            "fill": "xyzyz",
            "copy": "fb8e20fc2e4c3f248c60c39bd652f3c1347298bb977b8b4d5903b85055620603",
            "sameAsCopy": true,
            "twice": "Digest already called",
            "bogus": true,
            "hmacKey": "The \"key\" argument must be of type string or an instance of ArrayBuffer, Buffer, TypedArray, DataView, KeyObject, or CryptoKey. Received undefined",
            "hashData": "The \"data\" argument must be of type string or an instance of Buffer, TypedArray, or DataView. Received type number (5)",
            "timer": ["object", "function", true, false, true],
            "inspect": ["{ a: [Object] }", "{\n  a: { b: { c: { d: {} } } }\n}"],
            "format": ["[ 1, [ 2, [length]: 1 ], [length]: 2 ]", " a y"],
            "columns": [
                "[\n  'a', 'b', 'c',\n  'd', 'e', 'f',\n  'g'\n]",
                "[\n   1,  2,  3,  4,  5,  6,  7,  8,\n   9, 10, 11, 12, 13, 14, 15, 16,\n  17, 18, 19, 20, 21, 22, 23, 24,\n  25, 26, 27\n]",
            ],
            "statusText": ["Created", "Not Found"],
        })
    );
}

#[test]
fn console_drops_css_and_timers_are_cleared_by_handle_or_number() {
    let out = run_track(
        r#"
async function onTrack() {
  console.log('%c styled', 'color: red');
  const fired = [];
  const a = setTimeout(() => fired.push('a'), 5);
  const b = setTimeout(() => fired.push('b'), 5);
  const c = setTimeout(() => fired.push('c'), 5);
  clearTimeout(a);
  clearTimeout(+b);
  await new Promise((r) => setTimeout(r, 20));
  return fired;
}"#,
        json!({"type": "track", "event": "E", "userId": "u"}),
    );
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.result, Some(json!(["c"])));
    assert_eq!(out.logs[0].message, " styled");
}

#[test]
fn intl_compact_indian_grouping_accounting_and_turkish_case_as_node() {
    let out = result(
        r#"
async function onTrack() {
  const f = (l, o, v) => new Intl.NumberFormat(l, o).format(v);
  const c = { notation: 'compact' };
  const d = new Date(Date.UTC(2024, 0, 5, 15, 4));
  const t = (o) => d.toLocaleString('en-US', Object.assign({ timeZone: 'UTC' }, o));
  return {
    compact: [1.234, 12.5, 123.456, 999.9, 1234, 12345, 123456, 999999, 1234567, -1500, 1e12, 1.5e15, 0].map((v) => f('en-US', c, v)).join('|'),
    compactLong: [1234, 1234567, 2e9, 1.5e12].map((v) => f('en-US', { notation: 'compact', compactDisplay: 'long' }, v)).join('|'),
    compactDigits: f('en-US', { notation: 'compact', maximumFractionDigits: 2 }, 1234567),
    compactCurrency: f('en-US', { notation: 'compact', style: 'currency', currency: 'USD' }, 1234567),
    indian: [12345678, 1234, 123, 1234567.891, -12345678].map((v) => v.toLocaleString('en-IN')).join('|'),
    rupees: f('en-IN', { style: 'currency', currency: 'INR' }, 12345678),
    accounting: [f('en-US', { style: 'currency', currency: 'USD', currencySign: 'accounting' }, -5),
      f('en-US', { style: 'currency', currency: 'USD', currencySign: 'accounting' }, 5),
      f('de-DE', { style: 'currency', currency: 'EUR', currencySign: 'accounting' }, -5)].join(' '),
    joiners: [t({ month: 'short', day: '2-digit', hour: '2-digit', minute: '2-digit' }), t({ month: 'long', day: 'numeric', hour: 'numeric', minute: '2-digit' }),
      t({ month: 'short', day: 'numeric', year: 'numeric', hour: 'numeric', minute: '2-digit' }), t({ dateStyle: 'long', timeStyle: 'short' })].join(' | '),
    turkish: ['istanbul'.toLocaleUpperCase('tr-TR'), 'İSTANBUL ıi'.toLocaleLowerCase('tr'), 'i'.toLocaleUpperCase('en-US')],
  };
}"#,
    );
    assert_eq!(
        out,
        json!({
            "compact": "1.2|13|123|1K|1.2K|12K|123K|1M|1.2M|-1.5K|1T|1500T|0",
            "compactLong": "1.2 thousand|1.2 million|2 billion|1.5 trillion",
            "compactDigits": "1.23M",
            "compactCurrency": "$1.2M",
            "indian": "1,23,45,678|1,234|123|12,34,567.891|-1,23,45,678",
            "rupees": "₹1,23,45,678.00",
            "accounting": "($5.00) $5.00 -5,00\u{a0}€",
            "joiners": "Jan 05, 03:04 PM | January 5 at 3:04 PM | Jan 5, 2024, 3:04 PM | January 5, 2024 at 3:04 PM",
            "turkish": ["İSTANBUL", "istanbul ıi", "I"],
        })
    );
}

#[test]
fn responses_made_by_a_function_are_typed_as_node_fetch_types_them() {
    let out = result(
        r#"
async function onTrack() {
  return [
    new Response('hi').headers.get('content-type'),
    new Response('hi', { headers: { 'Content-Type': 'text/html' } }).headers.get('content-type'),
    new Response(Buffer.from('hi')).headers.get('content-type'),
    Response.json({ a: 1 }).headers.get('content-type'),
    Response.json({ a: 1 }, { headers: { 'content-type': 'application/vnd.api+json' } }).headers.get('content-type'),
  ];
}"#,
    );
    assert_eq!(
        out,
        json!([
            "text/plain;charset=UTF-8",
            "text/html",
            null,
            "application/json",
            "application/vnd.api+json"
        ])
    );
}

#[test]
fn json_parse_errors_are_worded_as_node_words_them() {
    let out = result(
        r#"
async function onTrack() {
  const out = [];
  for (const s of ['<html>oops</html>', '<!DOCTYPE html><html><body>Error 502 bad gateway</body></html>', '{"a":1,}', '{a:1}', '',
    '[1,2', '{"a":"x', 'undefined', 'abc', '{"a":1}x', 'tru', '1e', '{"a" 1}', 'null null', '"\\x"']) {
    try { JSON.parse(s); out.push('ok'); } catch (e) { out.push(e.name + ': ' + e.message); }
  }
  return out;
}"#,
    );
    // Node 20's messages for the same inputs.
    let node = [
        "Unexpected token '<', \"<html>oops</html>\" is not valid JSON",
        "Unexpected token '<', \"<!DOCTYPE \"... is not valid JSON",
        "Expected double-quoted property name in JSON at position 7",
        "Expected property name or '}' in JSON at position 1",
        "Unexpected end of JSON input",
        "Expected ',' or ']' after array element in JSON at position 4",
        "Unterminated string in JSON at position 7",
        "\"undefined\" is not valid JSON",
        "Unexpected token 'a', \"abc\" is not valid JSON",
        "Unexpected non-whitespace character after JSON at position 7",
        "Unexpected end of JSON input",
        "Exponent part is missing a number in JSON at position 2",
        "Expected ':' after property name in JSON at position 5",
        "Unexpected non-whitespace character after JSON at position 5",
        "Bad escaped character in JSON at position 2",
    ];
    let want: Vec<String> = node.iter().map(|m| format!("SyntaxError: {m}")).collect();
    assert_eq!(out, json!(want));
}

#[test]
fn errors_raised_by_awaited_calls_have_the_awaiting_line_and_nodes_words() {
    let src = r#"async function onTrack(event) {
  const res = await fetch('https://api.example.com/html');
  if (event.properties.kind === 'read') return event.properties.missing.deep;
  return await res.json();
}"#;
    let mocks = FetchMode::Mock(Arc::new(vec![MockResponse {
        url: "https://api.example.com/".into(),
        status: 502,
        headers: Default::default(),
        body: json!("<html>oops</html>"),
    }]));
    let run = |kind: &str| {
        run_destination_once(
            &FunctionCode::new("f", "function.js", src),
            &json!({"type": "track", "event": "E", "userId": "u", "properties": {"kind": kind}}),
            &json!({}),
            &Limits::default(),
            mocks.clone(),
        )
        .error
        .expect("an error")
    };
    let e = run("json");
    assert_eq!(e.name, "FetchError");
    assert_eq!(
        e.message,
        "invalid json response body at https://api.example.com/html reason: Unexpected token '<', \"<html>oops</html>\" is not valid JSON"
    );
    assert_eq!(e.line, Some(4), "{e:?}");
    let e = run("read");
    assert_eq!(
        e.message,
        "Cannot read properties of undefined (reading 'deep')"
    );
    assert_eq!(e.line, Some(3));
}
