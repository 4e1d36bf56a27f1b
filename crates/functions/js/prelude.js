// The globals of Segment's function runtime, for switchyard's QuickJS sandbox.
// Evaluated once per runtime, before the user's code. `__host` holds the few
// native services (logging, HTTP, crypto, URL parsing); everything else is
// plain JavaScript here. The user's code never sees `__host` (it is removed
// from the global object once captured).
(function (host) {
  'use strict';
  const G = globalThis;
  delete G.__host;

  const define = (name, value) =>
    Object.defineProperty(G, name, { value, writable: true, configurable: true, enumerable: false });

  // ---------------------------------------------------------------- errors
  function errorClass(name, retry) {
    const C = class extends Error {
      constructor(message) {
        super(message);
        this.name = name;
      }
    };
    Object.defineProperty(C, 'name', { value: name });
    return C;
  }
  const ValidationError = errorClass('ValidationError');
  const EventNotSupported = errorClass('EventNotSupported');
  const InvalidEventPayload = errorClass('InvalidEventPayload');
  const RetryError = errorClass('RetryError');
  const DropEvent = errorClass('DropEvent');
  const InvalidSettingsError = errorClass('InvalidSettingsError');
  for (const [n, c] of Object.entries({
    ValidationError, EventNotSupported, InvalidEventPayload, RetryError, DropEvent, InvalidSettingsError,
  })) define(n, c);

  // ---------------------------------------------------------------- bytes
  function utf8Encode(str) {
    str = String(str);
    const out = [];
    for (let i = 0; i < str.length; i++) {
      let c = str.charCodeAt(i);
      if (c >= 0xd800 && c < 0xdc00 && i + 1 < str.length) {
        const d = str.charCodeAt(i + 1);
        if (d >= 0xdc00 && d < 0xe000) {
          c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
          i++;
        } else c = 0xfffd;
      } else if (c >= 0xd800 && c < 0xe000) c = 0xfffd;
      if (c < 0x80) out.push(c);
      else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 63));
      else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
      else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 63), 0x80 | ((c >> 6) & 63), 0x80 | (c & 63));
    }
    return new Uint8Array(out);
  }
  function utf8Decode(bytes) {
    let s = '';
    for (let i = 0; i < bytes.length; ) {
      const b = bytes[i];
      let c, n;
      if (b < 0x80) { c = b; n = 1; }
      else if (b >= 0xc2 && b < 0xe0) { c = b & 31; n = 2; }
      else if (b >= 0xe0 && b < 0xf0) { c = b & 15; n = 3; }
      else if (b >= 0xf0 && b < 0xf5) { c = b & 7; n = 4; }
      else { s += '\ufffd'; i++; continue; }
      if (i + n > bytes.length) { s += '\ufffd'; i++; continue; }
      let ok = true;
      for (let k = 1; k < n; k++) {
        const x = bytes[i + k];
        if ((x & 0xc0) !== 0x80) { ok = false; break; }
        c = (c << 6) | (x & 63);
      }
      if (!ok) { s += '\ufffd'; i++; continue; }
      i += n;
      if (c >= 0x10000) {
        c -= 0x10000;
        s += String.fromCharCode(0xd800 + (c >> 10), 0xdc00 + (c & 1023));
      } else s += String.fromCharCode(c);
    }
    return s;
  }
  const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  const B64_INDEX = {};
  for (let i = 0; i < 64; i++) B64_INDEX[B64[i]] = i;
  B64_INDEX['-'] = 62;
  B64_INDEX['_'] = 63;
  function b64Encode(bytes) {
    let s = '';
    let i = 0;
    for (; i + 2 < bytes.length; i += 3) {
      const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
      s += B64[n >> 18] + B64[(n >> 12) & 63] + B64[(n >> 6) & 63] + B64[n & 63];
    }
    if (i < bytes.length) {
      const n = (bytes[i] << 16) | ((i + 1 < bytes.length ? bytes[i + 1] : 0) << 8);
      s += B64[n >> 18] + B64[(n >> 12) & 63];
      s += i + 1 < bytes.length ? B64[(n >> 6) & 63] + '=' : '==';
    }
    return s;
  }
  function b64Decode(str, strict) {
    str = String(str).replace(/[\s=]/g, '');
    const out = [];
    let buf = 0, bits = 0;
    for (const ch of str) {
      const v = B64_INDEX[ch];
      if (v === undefined) {
        if (strict) throw new DOMExceptionLike('The string to be decoded is not correctly encoded.', 'InvalidCharacterError');
        continue;
      }
      buf = (buf << 6) | v;
      bits += 6;
      if (bits >= 8) {
        bits -= 8;
        out.push((buf >> bits) & 255);
      }
    }
    return new Uint8Array(out);
  }
  class DOMExceptionLike extends Error {
    constructor(message, name) { super(message); this.name = name || 'Error'; }
  }
  function hexEncode(bytes) {
    let s = '';
    for (const b of bytes) s += (b < 16 ? '0' : '') + b.toString(16);
    return s;
  }
  function hexDecode(str) {
    const out = [];
    for (let i = 0; i + 1 < str.length; i += 2) {
      const v = parseInt(str.substr(i, 2), 16);
      if (Number.isNaN(v)) break;
      out.push(v);
    }
    return new Uint8Array(out);
  }
  function latin1Encode(str) {
    const out = new Uint8Array(str.length);
    for (let i = 0; i < str.length; i++) out[i] = str.charCodeAt(i) & 255;
    return out;
  }
  function latin1Decode(bytes) {
    let s = '';
    for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i]);
    return s;
  }

  // Segment's globals are the npm packages atob@2 and btoa@1, not the
  // WHATWG functions: they never throw. Characters past Latin-1 keep their
  // low byte, and characters outside base64 are skipped, as Buffer does.
  define('atob', function atob(data) {
    return latin1Decode(b64Decode(String(data), false));
  });
  define('btoa', function btoa(data) {
    if (data instanceof Uint8Array) return b64Encode(data);
    return b64Encode(latin1Encode(String(data)));
  });

  // ---------------------------------------------------------------- JSON
  // JSON.parse's errors in Node 20's words, which functions log, forward
  // and match on: QuickJS words some differently and gives some no position.
  const engineParse = JSON.parse;
  const skipSpace = (src, i) => { while (i < src.length && ' \t\n\r'.includes(src[i])) i++; return i; };
  // Where the first JSON value of `src` ends (structure only: it is known
  // to be valid up to there).
  function valueEnd(src) {
    let i = skipSpace(src, 0);
    let depth = 0, inString = false;
    for (; i < src.length; i++) {
      const c = src[i];
      if (inString) {
        if (c === '\\') i++;
        else if (c === '"') { inString = false; if (!depth) return i + 1; }
      } else if (c === '"') inString = true;
      else if (c === '{' || c === '[') depth++;
      else if (c === '}' || c === ']') { depth--; if (!depth) return i + 1; }
      else if (!depth && ' \t\n\r'.includes(c)) return i;
    }
    return i;
  }
  function endsInString(src) {
    let inString = false;
    for (let i = 0; i < src.length; i++) {
      if (inString && src[i] === '\\') i++;
      else if (src[i] === '"') inString = !inString;
    }
    return inString;
  }
  function jsonMessage(msg, src) {
    msg = msg.replace(/ \(line \d+ column \d+\)$/, '');
    let m;
    if ((m = /^Expected property name or '\}' in JSON at position (\d+)$/.exec(msg))) {
      return src.slice(0, Number(m[1])).trimEnd().endsWith(',') ? 'Expected double-quoted property name in JSON at position ' + m[1] : msg;
    }
    if (msg === 'unexpected data at the end') return 'Unexpected non-whitespace character after JSON at position ' + skipSpace(src, valueEnd(src));
    if (msg === 'Unexpected end of JSON input') return endsInString(src) ? 'Unterminated string in JSON at position ' + src.length : msg;
    if ((m = /^unexpected token: '([\s\S]*)'$/.exec(msg))) {
      if (['NaN', 'Infinity', 'undefined', '[object Object]'].includes(src)) return '"' + src + '" is not valid JSON';
      const pos = src.indexOf(m[1]);
      if (pos < 0 || !m[1]) return msg;
      if (/^(t(r(ue?)?)?|f(a(l(se?)?)?)?|n(u(ll?)?)?)$/.test(m[1]) && pos + m[1].length >= src.trimEnd().length) return 'Unexpected end of JSON input';
      let context;
      if (src.length <= 21) context = '"' + src + '"';
      else {
        const a = Math.max(0, pos - 10), b = Math.min(src.length, pos + 10);
        context = (a > 0 ? '..."' : '"') + src.slice(a, b) + (b < src.length ? '"...' : '"');
      }
      return "Unexpected token '" + src[pos] + "', " + context + ' is not valid JSON';
    }
    return msg;
  }
  Object.defineProperty(JSON, 'parse', {
    value: function parse(text, reviver) {
      try {
        return engineParse(text, reviver);
      } catch (e) {
        if (e instanceof SyntaxError) {
          try { e.message = jsonMessage(String(e.message), String(text)); } catch (_) { /* keep QuickJS's words */ }
        }
        throw e;
      }
    },
    writable: true,
    configurable: true,
    enumerable: false,
  });

  // ---------------------------------------------------------------- Buffer
  function normEnc(enc) {
    enc = (enc || 'utf8').toLowerCase();
    if (enc === 'utf-8') return 'utf8';
    if (enc === 'binary') return 'latin1';
    if (enc === 'ascii') return 'latin1';
    if (enc === 'base64url') return 'base64url';
    return enc;
  }
  function encodeString(str, enc) {
    switch (normEnc(enc)) {
      case 'utf8': return utf8Encode(str);
      case 'base64': case 'base64url': return b64Decode(str, false);
      case 'hex': return hexDecode(str);
      case 'latin1': return latin1Encode(str);
      case 'ucs2': case 'utf16le': case 'ucs-2': case 'utf-16le': {
        const out = new Uint8Array(str.length * 2);
        for (let i = 0; i < str.length; i++) { const c = str.charCodeAt(i); out[2 * i] = c & 255; out[2 * i + 1] = c >> 8; }
        return out;
      }
      default: throw new TypeError('Unknown encoding: ' + enc);
    }
  }
  function decodeBytes(bytes, enc) {
    switch (normEnc(enc)) {
      case 'utf8': return utf8Decode(bytes);
      case 'base64': return b64Encode(bytes);
      case 'base64url': return b64Encode(bytes).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
      case 'hex': return hexEncode(bytes);
      case 'latin1': return latin1Decode(bytes);
      default: throw new TypeError('Unknown encoding: ' + enc);
    }
  }
  class Buffer extends Uint8Array {
    // `new Buffer(string, encoding)` and `new Buffer(array)`: deprecated in
    // Node but still found in functions; the typed-array forms pass through.
    constructor(value, encOrOffset, length) {
      if (typeof value === 'string') {
        const bytes = encodeString(value, encOrOffset);
        super(bytes.length);
        this.set(bytes);
      } else if (Array.isArray(value)) {
        super(value.length);
        this.set(value);
      } else if (encOrOffset === undefined && length === undefined) {
        super(value);
      } else {
        super(value, encOrOffset, length);
      }
    }
    static from(value, encOrOffset, length) {
      if (typeof value === 'string') return Buffer._wrap(encodeString(value, encOrOffset));
      if (value instanceof ArrayBuffer) return new Buffer(value, encOrOffset || 0, length === undefined ? value.byteLength - (encOrOffset || 0) : length);
      if (ArrayBuffer.isView(value)) return Buffer._wrap(new Uint8Array(value.buffer, value.byteOffset, value.byteLength).slice());
      if (Array.isArray(value)) return Buffer._wrap(Uint8Array.from(value));
      if (value && value.type === 'Buffer' && Array.isArray(value.data)) return Buffer._wrap(Uint8Array.from(value.data));
      throw new TypeError('The first argument must be a string, Buffer, ArrayBuffer, Array, or array-like object.');
    }
    static _wrap(u8) {
      return new Buffer(u8.buffer, u8.byteOffset, u8.byteLength);
    }
    static alloc(size, fill, enc) {
      const b = new Buffer(size);
      if (fill !== undefined && fill !== 0) b.fill(fill, enc);
      return b;
    }
    // A string or bytes fill repeats as a pattern (`alloc(5, 'ab')` is
    // `ababa`), as Node's does.
    fill(value, offset, end, enc) {
      if (typeof offset === 'string') { enc = offset; offset = undefined; end = undefined; }
      else if (typeof end === 'string') { enc = end; end = undefined; }
      const from = offset === undefined ? 0 : offset;
      const to = end === undefined ? this.length : end;
      if (typeof value !== 'string' && !(value instanceof Uint8Array)) return super.fill(value, from, to);
      const pattern = typeof value === 'string' ? encodeString(value, enc) : value;
      if (!pattern.length) return super.fill(0, from, to);
      for (let i = from, j = 0; i < to; i++, j = (j + 1) % pattern.length) this[i] = pattern[j];
      return this;
    }
    static allocUnsafe(size) { return new Buffer(size); }
    static isBuffer(x) { return x instanceof Buffer; }
    static isEncoding(e) { try { encodeString('', e); return true; } catch (_) { return false; } }
    static byteLength(v, enc) { return typeof v === 'string' ? encodeString(v, enc).length : v.byteLength; }
    static concat(list, total) {
      const len = total === undefined ? list.reduce((n, b) => n + b.length, 0) : total;
      const out = Buffer.alloc(len);
      let off = 0;
      for (const b of list) { if (off >= len) break; out.set(b.subarray(0, len - off), off); off += b.length; }
      return out;
    }
    static compare(a, b) { return a.compare(b); }
    toString(enc, start, end) {
      const view = new Uint8Array(this.buffer, this.byteOffset + (start || 0), (end === undefined ? this.length : end) - (start || 0));
      return decodeBytes(view, enc);
    }
    toJSON() { return { type: 'Buffer', data: Array.from(this) }; }
    equals(other) { return this.compare(other) === 0; }
    compare(other) {
      const n = Math.min(this.length, other.length);
      for (let i = 0; i < n; i++) if (this[i] !== other[i]) return this[i] < other[i] ? -1 : 1;
      return this.length === other.length ? 0 : this.length < other.length ? -1 : 1;
    }
    slice(start, end) { const s = this.subarray(start, end); return new Buffer(s.buffer, s.byteOffset, s.byteLength); }
    write(str, offset, enc) { const b = encodeString(str, enc); this.set(b.subarray(0, this.length - (offset || 0)), offset || 0); return Math.min(b.length, this.length - (offset || 0)); }
    indexOf(value, byteOffset, enc) {
      if (typeof byteOffset === 'string') { enc = byteOffset; byteOffset = 0; }
      let from = Math.trunc(Number(byteOffset) || 0);
      if (from < 0) from = Math.max(this.length + from, 0);
      if (typeof value === 'number') return Uint8Array.prototype.indexOf.call(this, value & 255, from);
      const needle = typeof value === 'string' ? encodeString(value, enc) : toBytes(value);
      if (needle.length === 0) return Math.min(from, this.length);
      outer: for (let i = from; i <= this.length - needle.length; i++) {
        for (let j = 0; j < needle.length; j++) if (this[i + j] !== needle[j]) continue outer;
        return i;
      }
      return -1;
    }
    includes(value, byteOffset, enc) { return this.indexOf(value, byteOffset, enc) !== -1; }
  }
  // readUInt8 … writeDoubleBE, as Node names them (and the `Uint` aliases).
  {
    const view = (b) => new DataView(b.buffer, b.byteOffset, b.byteLength);
    const kinds = [
      ['UInt8', 1, 'Uint8'], ['Int8', 1, 'Int8'],
      ['UInt16', 2, 'Uint16'], ['Int16', 2, 'Int16'],
      ['UInt32', 4, 'Uint32'], ['Int32', 4, 'Int32'],
      ['Float', 4, 'Float32'], ['Double', 8, 'Float64'],
      ['BigUInt64', 8, 'BigUint64'], ['BigInt64', 8, 'BigInt64'],
    ];
    const check = (b, o, size) => {
      if (o === undefined) o = 0;
      if (!Number.isInteger(o) || o < 0 || o + size > b.length) {
        const e = new RangeError('The value of "offset" is out of range. It must be >= 0 and <= ' + (b.length - size) + '. Received ' + o);
        e.code = 'ERR_OUT_OF_RANGE';
        throw e;
      }
      return o;
    };
    for (const [name, size, dv] of kinds) {
      const ends = size === 1 ? [['', false]] : [['LE', true], ['BE', false]];
      for (const [end, little] of ends) {
        const read = function (o) { return view(this)['get' + dv](check(this, o, size), little); };
        const write = function (value, o) { o = check(this, o, size); view(this)['set' + dv](o, value, little); return o + size; };
        for (const n of [name, name.replace('UInt', 'Uint')]) {
          Buffer.prototype['read' + n + end] = read;
          Buffer.prototype['write' + n + end] = write;
        }
      }
    }
  }
  define('Buffer', Buffer);
  class TextEncoder {
    get encoding() { return 'utf-8'; }
    encode(input) { return utf8Encode(input === undefined ? '' : String(input)); }
  }
  class TextDecoder {
    constructor(label) {
      const l = String(label === undefined ? 'utf-8' : label).trim().toLowerCase();
      if (l !== 'utf-8' && l !== 'utf8' && l !== 'unicode-1-1-utf-8') throw new RangeError('The "' + label + '" encoding is not supported');
    }
    get encoding() { return 'utf-8'; }
    decode(input) {
      if (input === undefined) return '';
      const bytes = input instanceof ArrayBuffer ? new Uint8Array(input) : new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
      return utf8Decode(bytes);
    }
  }
  define('TextEncoder', TextEncoder);
  define('TextDecoder', TextDecoder);
  // The structured clone algorithm for what JSON-like data holds: plain
  // objects and arrays (cycles kept), dates, regular expressions, maps,
  // sets, typed arrays, errors; functions cannot be cloned.
  define('structuredClone', function structuredClone(value) {
    const seen = new Map();
    const clone = (v) => {
      if (typeof v === 'function' || typeof v === 'symbol') throw new DOMExceptionLike(String(v) + ' could not be cloned.', 'DataCloneError');
      if (v === null || typeof v !== 'object') return v;
      if (seen.has(v)) return seen.get(v);
      let out;
      if (v instanceof Date) out = new Date(v.getTime());
      else if (v instanceof RegExp) out = new RegExp(v.source, v.flags);
      else if (v instanceof ArrayBuffer) out = v.slice(0);
      else if (ArrayBuffer.isView(v)) out = new v.constructor(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
      else if (v instanceof Map) { out = new Map(); seen.set(v, out); for (const [k, x] of v) out.set(clone(k), clone(x)); return out; }
      else if (v instanceof Set) { out = new Set(); seen.set(v, out); for (const x of v) out.add(clone(x)); return out; }
      else if (v instanceof Error) { out = new Error(v.message); out.name = v.name; if (v.stack) out.stack = v.stack; }
      else {
        out = Array.isArray(v) ? new Array(v.length) : {};
        seen.set(v, out);
        for (const k of Object.keys(v)) out[k] = clone(v[k]);
        return out;
      }
      seen.set(v, out);
      return out;
    };
    return clone(value);
  });
  const toBytes = (data, enc) => {
    if (typeof data === 'string') return encodeString(data, enc);
    if (data instanceof ArrayBuffer) return new Uint8Array(data);
    if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    throw new TypeError('data must be a string, Buffer, TypedArray or DataView');
  };

  // ---------------------------------------------------------------- crypto
  // Node's wording for a wrong argument type, which functions log.
  function received(v) {
    if (v === null || v === undefined) return 'Received ' + v;
    if (typeof v === 'function') return 'Received function ' + (v.name || '<anonymous>');
    if (typeof v === 'object') return 'Received ' + (v.constructor && v.constructor.name ? 'an instance of ' + v.constructor.name : inspect(v, 0));
    let shown = inspect(v, 0);
    if (shown.length > 28) shown = shown.slice(0, 25) + '...';
    return 'Received type ' + typeof v + ' (' + shown + ')';
  }
  function argBytes(name, kinds, data, enc) {
    if (typeof data === 'string' || data instanceof ArrayBuffer || ArrayBuffer.isView(data)) return toBytes(data, enc);
    const e = new TypeError('The "' + name + '" argument must be of type string or an instance of ' + kinds + '. ' + received(data));
    e.code = 'ERR_INVALID_ARG_TYPE';
    throw e;
  }
  function finalized() {
    const e = new Error('Digest already called');
    e.code = 'ERR_CRYPTO_HASH_FINALIZED';
    return e;
  }
  function digestObject(kind, alg, key, parts) {
    parts = parts || [];
    let done = false;
    const obj = {
      update(data, enc) {
        if (done) throw finalized();
        parts.push(argBytes('data', 'Buffer, TypedArray, or DataView', data, enc));
        return obj;
      },
      digest(enc) {
        if (done) throw finalized();
        done = true;
        const all = Buffer.concat(parts.map((p) => Buffer._wrap(p)));
        const out = kind === 'hmac'
          ? host.hmac(String(alg), b64Encode(key), b64Encode(all))
          : host.hash(String(alg), b64Encode(all));
        const bytes = Buffer._wrap(b64Decode(out, false));
        if (!enc || enc === 'buffer') return bytes;
        // Node answers an encoding it does not know with the bytes.
        try { return bytes.toString(enc); } catch (_) { return bytes; }
      },
    };
    if (kind === 'hash') {
      obj.copy = () => {
        if (done) throw finalized();
        return digestObject(kind, alg, key, parts.slice());
      };
    }
    return obj;
  }
  const crypto = {
    createHmac: (alg, key) => {
      host.hmac(String(alg), '', '');
      return digestObject('hmac', alg, argBytes('key', 'ArrayBuffer, Buffer, TypedArray, DataView, KeyObject, or CryptoKey', key && key.export ? key.export() : key));
    },
    createHash: (alg) => {
      host.hash(String(alg), '');
      return digestObject('hash', alg, null);
    },
    getHashes: () => ['md5', 'sha1', 'sha256', 'sha384', 'sha512'],
    randomBytes: (n) => Buffer._wrap(b64Decode(host.randomBytes(n), false)),
    randomUUID: () => host.uuid(),
    getRandomValues(arr) {
      const bytes = b64Decode(host.randomBytes(arr.byteLength), false);
      new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength).set(bytes);
      return arr;
    },
    timingSafeEqual(a, b) {
      if (a.length !== b.length) throw new RangeError('Input buffers must have the same byte length');
      let d = 0;
      for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
      return d === 0;
    },
  };
  // Public-key signatures (RSA PKCS#1 v1.5, ECDSA on P-256/P-384), by the host.
  class KeyObject {
    constructor(type, pem) { this.type = type; this._pem = pem; }
    export() { return this._pem; }
  }
  function keyText(key) {
    if (key instanceof KeyObject) return key._pem;
    if (typeof key === 'string') return key;
    if (key instanceof ArrayBuffer || ArrayBuffer.isView(key)) return utf8Decode(toBytes(key));
    if (key && typeof key === 'object' && key.key !== undefined) {
      if (key.passphrase) throw new Error('encrypted private keys are not supported: give the key unencrypted');
      if (key.padding !== undefined && key.padding !== 1) throw new Error('only PKCS#1 v1.5 padding is supported for RSA signatures');
      return keyText(key.key);
    }
    throw new TypeError('The "key" argument must be of type string or an instance of Buffer or KeyObject');
  }
  const p1363 = (key) => !!(key && typeof key === 'object' && key.dsaEncoding === 'ieee-p1363');
  const signWith = (alg, data, key) =>
    Buffer._wrap(b64Decode(host.sign(String(alg || 'sha256'), keyText(key), b64Encode(data), p1363(key)), false));
  const verifyWith = (alg, data, key, sig) =>
    host.verify(String(alg || 'sha256'), keyText(key), b64Encode(data), b64Encode(sig), p1363(key));
  function signatureObject(alg, finish) {
    const parts = [];
    const obj = {
      update(data, enc) { parts.push(toBytes(data, enc)); return obj; },
      end(data, enc) { if (data !== undefined) parts.push(toBytes(data, enc)); return obj; },
      _data: () => Buffer.concat(parts.map((p) => Buffer._wrap(p))),
    };
    return finish(obj);
  }
  Object.assign(crypto, {
    KeyObject,
    createPrivateKey: (key) => new KeyObject('private', keyText(key)),
    createPublicKey: (key) => new KeyObject('public', keyText(key)),
    createSign: (alg) => signatureObject(alg, (obj) => Object.assign(obj, {
      sign(key, enc) { const out = signWith(alg, obj._data(), key); return enc ? out.toString(enc) : out; },
    })),
    createVerify: (alg) => signatureObject(alg, (obj) => Object.assign(obj, {
      verify(key, sig, enc) { return verifyWith(alg, obj._data(), key, toBytes(sig, enc)); },
    })),
    sign: (alg, data, key, cb) => {
      const out = signWith(alg, toBytes(data), key);
      if (typeof cb === 'function') { Promise.resolve().then(() => cb(null, out)); return undefined; }
      return out;
    },
    verify: (alg, data, key, sig, cb) => {
      const ok = verifyWith(alg, toBytes(data), key, toBytes(sig));
      if (typeof cb === 'function') { Promise.resolve().then(() => cb(null, ok)); return undefined; }
      return ok;
    },
    pbkdf2Sync: (password, salt, iterations, keylen, digest) =>
      Buffer._wrap(b64Decode(host.pbkdf2(String(digest || 'sha1'), b64Encode(toBytes(password)), b64Encode(toBytes(salt)), iterations, keylen), false)),
    pbkdf2(password, salt, iterations, keylen, digest, cb) {
      let out;
      try { out = crypto.pbkdf2Sync(password, salt, iterations, keylen, digest); } catch (e) { Promise.resolve().then(() => cb(e)); return; }
      Promise.resolve().then(() => cb(null, out));
    },
  });
  define('crypto', crypto);

  // ---------------------------------------------------------------- URL
  class URLSearchParams {
    constructor(init) {
      this._list = [];
      if (init === undefined || init === null) return;
      if (typeof init === 'string') {
        const s = init.startsWith('?') ? init.slice(1) : init;
        for (const part of s.split('&')) {
          if (!part) continue;
          const i = part.indexOf('=');
          const k = i < 0 ? part : part.slice(0, i);
          const v = i < 0 ? '' : part.slice(i + 1);
          this._list.push([decodeQ(k), decodeQ(v)]);
        }
      } else if (init instanceof URLSearchParams) {
        this._list = init._list.map((p) => p.slice());
      } else if (Array.isArray(init) || typeof init[Symbol.iterator] === 'function') {
        for (const [k, v] of init) this._list.push([String(k), String(v)]);
      } else {
        for (const k of Object.keys(init)) this._list.push([k, String(init[k])]);
      }
    }
    get(k) { const p = this._list.find((x) => x[0] === k); return p ? p[1] : null; }
    getAll(k) { return this._list.filter((x) => x[0] === k).map((x) => x[1]); }
    has(k) { return this._list.some((x) => x[0] === k); }
    set(k, v) {
      const i = this._list.findIndex((x) => x[0] === k);
      if (i < 0) this._list.push([k, String(v)]);
      else { this._list[i][1] = String(v); this._list = this._list.filter((x, j) => j <= i || x[0] !== k); }
      this._changed();
    }
    append(k, v) { this._list.push([String(k), String(v)]); this._changed(); }
    delete(k) { this._list = this._list.filter((x) => x[0] !== k); this._changed(); }
    sort() { this._list.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)); this._changed(); }
    forEach(fn, self) { for (const [k, v] of this._list) fn.call(self, v, k, this); }
    keys() { return this._list.map((x) => x[0])[Symbol.iterator](); }
    values() { return this._list.map((x) => x[1])[Symbol.iterator](); }
    entries() { return this._list.map((x) => x.slice())[Symbol.iterator](); }
    [Symbol.iterator]() { return this.entries(); }
    get size() { return this._list.length; }
    toString() { return this._list.map(([k, v]) => encodeQ(k) + '=' + encodeQ(v)).join('&'); }
    _changed() { if (this._url) this._url._search = this._list.length ? '?' + this.toString() : ''; }
  }
  function decodeQ(s) {
    try { return decodeURIComponent(s.replace(/\+/g, ' ')); } catch (_) { return s; }
  }
  function encodeQ(s) {
    return encodeURIComponent(s).replace(/%20/g, '+').replace(/[!'()~]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
  }
  class URL {
    constructor(input, base) {
      const parsed = host.parseUrl(String(input), base === undefined ? '' : String(base instanceof URL ? base.href : base));
      if (!parsed) throw new TypeError('Invalid URL: ' + input);
      const p = JSON.parse(parsed);
      this.protocol = p.protocol;
      this.username = p.username;
      this.password = p.password;
      this.hostname = p.hostname;
      this.port = p.port;
      this._pathname = p.pathname;
      this._search = p.search;
      this.hash = p.hash;
      const sp = new URLSearchParams(p.search);
      sp._url = this;
      Object.defineProperty(this, 'searchParams', { value: sp, enumerable: false });
    }
    static canParse(input, base) {
      try { new URL(input, base); return true; } catch (_) { return false; }
    }
    get pathname() { return this._pathname; }
    set pathname(v) {
      v = String(v);
      if (!v.startsWith('/')) v = '/' + v;
      // The WHATWG path percent-encode set, and anything beyond ASCII.
      this._pathname = v
        .replace(/[\x00-\x20"#<>?`{}\x7f]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0'))
        .replace(/[^\x00-\x7f]+/g, (t) => encodeURIComponent(t));
    }
    get search() { return this._search; }
    set search(v) {
      v = String(v);
      this._search = v && !v.startsWith('?') ? '?' + v : v;
      this.searchParams._list = new URLSearchParams(this._search)._list;
    }
    get host() { return this.hostname + (this.port ? ':' + this.port : ''); }
    get origin() { return this.protocol + '//' + this.host; }
    get href() {
      const auth = this.username ? this.username + (this.password ? ':' + this.password : '') + '@' : '';
      return this.protocol + '//' + auth + this.host + this._pathname + this._search + this.hash;
    }
    toString() { return this.href; }
    toJSON() { return this.href; }
  }
  define('URL', URL);
  define('URLSearchParams', URLSearchParams);

  // ---------------------------------------------------------------- Headers
  // A header name is an HTTP token, as node-fetch checks.
  function headerName(k) {
    k = String(k);
    if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(k)) throw new TypeError(k + ' is not a legal HTTP header name');
    return k.toLowerCase();
  }
  // As node-fetch 2's: each name keeps its values apart (`raw()`, every
  // Set-Cookie line) and the case it was first given; `get` joins them.
  function headerValue(v) {
    v = String(v);
    if (!trustValues && /[^\t\x20-\x7e\x80-\xff]/.test(v)) throw new TypeError(v + ' is not a legal HTTP header value');
    return v;
  }
  // Headers that came over the wire (a response, the request a source
  // function runs on) are taken as they are: Node never refuses what it
  // received.
  let trustValues = false;
  function receivedHeaders(init) {
    trustValues = true;
    try { return new Headers(init); } finally { trustValues = false; }
  }
  class Headers {
    constructor(init) {
      this._map = new Map();
      if (init === undefined || init === null) return;
      if (init instanceof Headers) {
        // Copied value by value, and checked: received headers passed on
        // to fetch are refused as node-fetch refuses them.
        for (const e of init._map.values()) for (const v of e.values) this.append(e.name, v);
      } else if (typeof init[Symbol.iterator] === 'function') {
        for (const pair of init) {
          if (typeof pair !== 'object' || typeof pair[Symbol.iterator] !== 'function') throw new TypeError('Each header pair must be iterable');
          const [k, v] = [...pair];
          this.append(k, v);
        }
      } else if (typeof init === 'object') {
        for (const k of Object.keys(init)) {
          const v = init[k];
          if (Array.isArray(v)) v.forEach((x) => this.append(k, x));
          else this.append(k, v);
        }
      } else throw new TypeError('Provided initializer must be an object');
    }
    append(k, v) {
      const name = String(k);
      const key = headerName(name);
      v = headerValue(v);
      const cur = this._map.get(key);
      if (cur) cur.values.push(v);
      else this._map.set(key, { name, values: [v] });
    }
    set(k, v) {
      const name = String(k);
      const key = headerName(name);
      v = headerValue(v);
      const cur = this._map.get(key);
      this._map.set(key, { name: cur ? cur.name : name, values: [v] });
    }
    getSetCookie() { const e = this._map.get('set-cookie'); return e ? e.values.slice() : []; }
    get(k) { const e = this._map.get(headerName(k)); return e === undefined ? null : e.values.join(', '); }
    has(k) { return this._map.has(headerName(k)); }
    delete(k) { this._map.delete(headerName(k)); }
    forEach(fn, self) { for (const [k, v] of this.entries()) fn.call(self, v, k, this); }
    entries() {
      return [...this._map.keys()].sort().map((k) => [k, this._map.get(k).values.join(', ')])[Symbol.iterator]();
    }
    keys() { return [...this.entries()].map((e) => e[0])[Symbol.iterator](); }
    values() { return [...this.entries()].map((e) => e[1])[Symbol.iterator](); }
    [Symbol.iterator]() { return this.entries(); }
    raw() { const o = {}; for (const e of this._map.values()) o[e.name] = e.values; return o; }
    // Every value on its own line, as Node's http client writes them.
    _pairs() { const out = []; for (const e of this._map.values()) for (const v of e.values) out.push([e.name, v]); return out; }
  }
  define('Headers', Headers);

  // ---------------------------------------------------------------- FormData
  // Segment's FormData is the form-data package (2.x): `append(name, value,
  // options)` with a filename string or `{filename, filepath, contentType}`,
  // the whole body at once with getBuffer(). Web FormData's readers stay.
  const MIME = {
    csv: 'text/csv', txt: 'text/plain', html: 'text/html', htm: 'text/html', css: 'text/css', js: 'application/javascript',
    json: 'application/json', xml: 'application/xml', pdf: 'application/pdf', zip: 'application/zip', gz: 'application/gzip',
    png: 'image/png', jpg: 'image/jpeg', jpeg: 'image/jpeg', gif: 'image/gif', svg: 'image/svg+xml', webp: 'image/webp',
    mp3: 'audio/mpeg', mp4: 'video/mp4', wav: 'audio/wave', doc: 'application/msword', xls: 'application/vnd.ms-excel',
    docx: 'application/vnd.openxmlformats-officedocument.wordprocessingml.document',
    xlsx: 'application/vnd.openxmlformats-officedocument.spreadsheetml.sheet', yaml: 'text/yaml', yml: 'text/yaml', md: 'text/markdown',
  };
  const mimeOf = (file) => { const m = /\.([^./\\]+)$/.exec(String(file)); return (m && MIME[m[1].toLowerCase()]) || null; };
  class FormData {
    constructor() { this._list = []; }
    append(k, v, options) {
      if (typeof options === 'string') options = { filename: options };
      options = options || {};
      if (typeof v === 'number') v = String(v);
      if (Array.isArray(v)) throw new Error('Arrays are not supported.');
      this._list.push([String(k), v, options]);
    }
    set(k, v, options) { this.delete(k); this.append(k, v, options); }
    get(k) { const p = this._list.find((x) => x[0] === k); return p ? p[1] : null; }
    getAll(k) { return this._list.filter((x) => x[0] === k).map((x) => x[1]); }
    has(k) { return this._list.some((x) => x[0] === k); }
    delete(k) { this._list = this._list.filter((x) => x[0] !== k); }
    entries() { return this._list.map((x) => [x[0], x[1]])[Symbol.iterator](); }
    [Symbol.iterator]() { return this.entries(); }
    getBoundary() {
      if (!this._boundary) {
        let digits = '';
        for (let i = 0; i < 24; i++) digits += Math.floor(Math.random() * 10);
        this._boundary = '--------------------------' + digits;
      }
      return this._boundary;
    }
    getHeaders(extra) {
      const out = { 'content-type': 'multipart/form-data; boundary=' + this.getBoundary() };
      for (const k of Object.keys(extra || {})) out[k.toLowerCase()] = extra[k];
      return out;
    }
    getBuffer() { return this._encode(); }
    getLengthSync() { return this._encode().length; }
    getLength(cb) { const n = this._encode().length; if (typeof cb === 'function') addTimer(() => cb(null, n), 0, [], false); }
    hasKnownLength() { return true; }
    _encode() {
      const b = this.getBoundary();
      const parts = [];
      for (const [k, v, options] of this._list) {
        const file = options.filepath || options.filename || (v && (v.name || v.path));
        let head = '--' + b + '\r\nContent-Disposition: form-data; name="' + k + '"';
        if (file) head += '; filename="' + (options.filepath ? String(file) : String(file).split(/[\\/]/).pop()) + '"';
        head += '\r\n';
        const type = options.contentType || (file && mimeOf(file)) || (typeof v === 'object' && v !== null ? 'application/octet-stream' : null);
        if (type) head += 'Content-Type: ' + type + '\r\n';
        parts.push(Buffer.from(head + '\r\n'));
        parts.push(typeof v === 'string' ? Buffer.from(v) : v instanceof ArrayBuffer || ArrayBuffer.isView(v) ? Buffer.from(toBytes(v)) : Buffer.from(String(v)));
        parts.push(Buffer.from('\r\n'));
      }
      parts.push(Buffer.from('--' + b + '--\r\n'));
      return Buffer.concat(parts);
    }
  }
  define('FormData', FormData);

  // ---------------------------------------------------------------- Response / Request / fetch
  // node-fetch 2's FetchError: `type` says what failed, and a system error
  // carries Node's `code` (and `errno`), which retry logic branches on.
  class FetchError extends Error {
    constructor(message, type, systemError) {
      super(message);
      this.type = type;
      if (systemError && systemError.code) this.code = this.errno = systemError.code;
    }
  }
  Object.defineProperty(FetchError.prototype, 'name', { value: 'FetchError', writable: true, configurable: true });
  // V8 traces an awaited call back to the function that awaited it; an error
  // the runtime rejects with later is given that caller's frames (taken at
  // the call), so the line reported is the function's.
  function fromCaller(err, site) {
    const frames = String(site.stack || '').split('\n').filter((l) => /^\s*at /.test(l) && !l.includes('switchyard-prelude.js'));
    if (frames.length) err.stack = frames.join('\n') + '\n';
    return err;
  }
  function answerError(a) {
    if (a.name === 'TypeError') return new TypeError(a.error);
    return new FetchError(a.error, a.type || 'system', a.code ? { code: a.code } : undefined);
  }
  const STATUS_TEXT = {
    100: 'Continue', 101: 'Switching Protocols', 200: 'OK', 201: 'Created', 202: 'Accepted', 203: 'Non-Authoritative Information',
    204: 'No Content', 205: 'Reset Content', 206: 'Partial Content', 207: 'Multi-Status', 300: 'Multiple Choices',
    301: 'Moved Permanently', 302: 'Found', 303: 'See Other', 304: 'Not Modified', 307: 'Temporary Redirect', 308: 'Permanent Redirect',
    400: 'Bad Request', 401: 'Unauthorized', 402: 'Payment Required', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed',
    406: 'Not Acceptable', 407: 'Proxy Authentication Required', 408: 'Request Timeout', 409: 'Conflict', 410: 'Gone',
    411: 'Length Required', 412: 'Precondition Failed', 413: 'Payload Too Large', 414: 'URI Too Long', 415: 'Unsupported Media Type',
    416: 'Range Not Satisfiable', 417: 'Expectation Failed', 418: "I'm a Teapot", 422: 'Unprocessable Entity', 423: 'Locked',
    424: 'Failed Dependency', 425: 'Too Early', 426: 'Upgrade Required', 428: 'Precondition Required', 429: 'Too Many Requests',
    431: 'Request Header Fields Too Large', 451: 'Unavailable For Legal Reasons', 500: 'Internal Server Error', 501: 'Not Implemented',
    502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout', 505: 'HTTP Version Not Supported',
    507: 'Insufficient Storage', 511: 'Network Authentication Required',
  };
  const isFormData = (body) => body instanceof FormData || (body && typeof body.getBoundary === 'function' && typeof body.getBuffer === 'function');
  function bodyBytes(body, headers) {
    if (body === undefined || body === null) return null;
    if (typeof body === 'string') return utf8Encode(body);
    if (body instanceof URLSearchParams) {
      if (headers && !headers.has('content-type')) headers.set('content-type', 'application/x-www-form-urlencoded;charset=UTF-8');
      return utf8Encode(body.toString());
    }
    if (isFormData(body)) {
      if (headers && !headers.has('content-type')) headers.set('content-type', 'multipart/form-data;boundary=' + body.getBoundary());
      return toBytes(body.getBuffer());
    }
    if (body instanceof ArrayBuffer || ArrayBuffer.isView(body)) return toBytes(body);
    // Anything else is sent as its string, typed as text, as node-fetch does.
    if (headers && !headers.has('content-type')) headers.set('content-type', 'text/plain;charset=UTF-8');
    return utf8Encode(String(body));
  }
  class Response {
    constructor(body, init) {
      init = init || {};
      this.status = init.status === undefined ? 200 : init.status;
      this.statusText = init.statusText || STATUS_TEXT[this.status] || '';
      this.headers = init._received ? receivedHeaders(init.headers) : new Headers(init.headers);
      this.url = init.url || '';
      this._counter = init.counter || 0;
      this._bodyError = init.bodyError || null;
      // Text bodies stay text: encoding them byte by byte in JavaScript is
      // the expensive part, and most bodies are only ever read as text.
      this._text = typeof body === 'string' ? body : null;
      this._cache = this._text === null ? bodyBytes(body, this.headers) || new Uint8Array(0) : null;
      // A body made here is typed as node-fetch types it; one that came
      // over the network (or a copy) keeps the headers it came with.
      if (this._text !== null && !init._asGiven && !this.headers.has('content-type')) this.headers.set('content-type', 'text/plain;charset=UTF-8');
      this.bodyUsed = false;
    }
    get _bytes() {
      if (this._cache === null) this._cache = utf8Encode(this._text);
      return this._cache;
    }
    get ok() { return this.status >= 200 && this.status < 300; }
    get redirected() { return this._counter > 0; }
    get type() { return 'default'; }
    // A body is read once, as node-fetch enforces (`clone()` first to read twice).
    _use() {
      if (this.bodyUsed) throw new TypeError('body used already for: ' + this.url);
      this.bodyUsed = true;
      if (this._bodyError) throw answerError(this._bodyError);
    }
    async text() { this._use(); return this._text !== null ? this._text : utf8Decode(this._bytes); }
    async json() {
      const site = new Error();
      const text = await this.text();
      try {
        return JSON.parse(text);
      } catch (err) {
        throw fromCaller(new FetchError('invalid json response body at ' + this.url + ' reason: ' + err.message, 'invalid-json'), site);
      }
    }
    async arrayBuffer() { this._use(); return this._bytes.slice().buffer; }
    async buffer() { this._use(); return Buffer.from(this._bytes); }
    clone() {
      if (this.bodyUsed) throw new Error('cannot clone body after it is used');
      const r = new Response(this._text !== null ? this._text : this._bytes, { status: this.status, statusText: this.statusText, headers: this.headers, url: this.url, _asGiven: true, _received: true });
      r._counter = this._counter;
      r._bodyError = this._bodyError;
      return r;
    }
    static json(data, init) {
      const r = new Response(JSON.stringify(data), Object.assign({}, init, { _asGiven: true }));
      if (!r.headers.has('content-type')) r.headers.set('content-type', 'application/json');
      return r;
    }
  }
  class Request {
    constructor(input, init) {
      init = init || {};
      const from = input instanceof Request ? input : null;
      this.url = from ? from.url : String(input);
      this.method = String(init.method || (from ? from.method : 'GET')).toUpperCase();
      this.headers = new Headers(init.headers || (from ? from.headers : undefined));
      const body = init.body !== undefined ? init.body
        : from ? (from._text !== null ? from._text : from._bytes) : undefined;
      this._text = typeof body === 'string' ? body : null;
      this._bytes = this._text === null ? bodyBytes(body, this.headers) : null;
      // As node-fetch does: a string body without a type is plain text.
      if (this._text !== null && !this.headers.has('content-type')) this.headers.set('content-type', 'text/plain;charset=UTF-8');
      // node-fetch's own options.
      const opt = (k, d) => (init[k] !== undefined ? init[k] : from ? from[k] : d);
      this.redirect = String(opt('redirect', 'follow'));
      this.follow = opt('follow', 20);
      this.compress = opt('compress', true);
      this.timeout = opt('timeout', 0);
      this.size = opt('size', 0);
      this.signal = opt('signal', null);
    }
    async text() { return this._text !== null ? this._text : this._bytes ? utf8Decode(this._bytes) : ''; }
    async json() { return JSON.parse(await this.text()); }
    clone() { return new Request(this); }
  }
  define('Response', Response);
  define('Request', Request);

  // ---------------------------------------------------------------- AbortController
  class AbortSignal {
    constructor() { this.aborted = false; this.reason = undefined; this.onabort = null; this._listeners = []; }
    addEventListener(type, fn) { if (type === 'abort' && typeof fn === 'function') this._listeners.push(fn); }
    removeEventListener(type, fn) { this._listeners = this._listeners.filter((f) => f !== fn); }
    throwIfAborted() { if (this.aborted) throw this.reason; }
    _abort(reason) {
      if (this.aborted) return;
      this.aborted = true;
      this.reason = reason === undefined ? new DOMExceptionLike('This operation was aborted', 'AbortError') : reason;
      const event = { type: 'abort', target: this };
      if (typeof this.onabort === 'function') this.onabort(event);
      for (const fn of this._listeners.splice(0)) fn(event);
    }
    static abort(reason) { const s = new AbortSignal(); s._abort(reason); return s; }
    static timeout(ms) {
      const s = new AbortSignal();
      addTimer(() => s._abort(new DOMExceptionLike('The operation was aborted due to timeout', 'TimeoutError')), ms, [], false);
      return s;
    }
  }
  class AbortController {
    constructor() { this.signal = new AbortSignal(); }
    abort(reason) { this.signal._abort(reason); }
  }
  define('AbortSignal', AbortSignal);
  define('AbortController', AbortController);
  // node-fetch rejects an aborted request with an AbortError.
  function abortError(signal) {
    const r = signal.reason;
    if (r instanceof Error && r.name !== 'AbortError' && r.name !== 'TimeoutError') return r;
    const e = new DOMExceptionLike('The user aborted a request.', 'AbortError');
    e.type = 'aborted';
    return e;
  }

  // The host runs fetches concurrently and answers them, by id, through
  // __fetchDone whenever the job queue is empty.
  const fetchesInFlight = new Map();
  define('__fetchDone', (id, answerJson) => {
    const resolve = fetchesInFlight.get(id);
    fetchesInFlight.delete(id);
    if (resolve) resolve(JSON.parse(answerJson));
  });
  async function fetch(input, init) {
    const site = new Error();
    const req = new Request(input, init);
    const hasBody = req._text !== null || req._bytes !== null;
    const id = host.fetch(
      req.method,
      req.url,
      JSON.stringify(req.headers._pairs()),
      req._text === null && req._bytes ? b64Encode(req._bytes) : '',
      req._text !== null ? req._text : '',
      req._text !== null,
      JSON.stringify({
        redirect: req.redirect,
        follow: Math.max(0, Math.floor(Number(req.follow) || 0)),
        timeout: Math.max(0, Math.floor(Number(req.timeout) || 0)),
        compress: req.compress !== false,
        has_body: hasBody,
      })
    );
    const signal = req.signal;
    if (signal && signal.aborted) { fetchesInFlight.delete(id); throw abortError(signal); }
    const answer = await new Promise((resolve, reject) => {
      fetchesInFlight.set(id, resolve);
      if (signal) signal.addEventListener('abort', () => { fetchesInFlight.delete(id); reject(abortError(signal)); });
    });
    if (answer.error) throw fromCaller(answerError(answer), site);
    const res = new Response(typeof answer.text === 'string' ? answer.text : b64Decode(answer.body, false), {
      status: answer.status,
      statusText: answer.statusText,
      headers: answer.headers,
      url: answer.url || req.url,
      counter: answer.counter,
      bodyError: answer.bodyError,
      _asGiven: true,
      _received: true,
    });
    // node-fetch's `size` option: bodies past it are refused on reading.
    if (req.size > 0 && !res._bodyError && (res._text !== null ? utf8Encode(res._text).length : res._cache.length) > req.size) {
      res._bodyError = { name: 'FetchError', type: 'max-size', error: 'content size at ' + res.url + ' over limit: ' + req.size };
    }
    return res;
  }
  define('fetch', fetch);

  // ---------------------------------------------------------------- timers
  // The host drives them: after the job queue drains, it asks for the next
  // timer and waits (within the invocation's budget) for it or for a fetch
  // to be answered, whichever comes first. Due times are real time, since
  // fetches run meanwhile.
  let timerSeq = 0;
  let timers = [];
  function addTimer(fn, ms, args, repeat) {
    const id = ++timerSeq;
    const delay = Math.max(0, Number(ms) || 0);
    timers.push({ id, due: Date.now() + delay, delay, fn, args, repeat: repeat ? Math.max(1, delay) : 0 });
    return id;
  }
  // Node's timer handles: objects with ref/unref (often called on them),
  // and their id as their primitive value.
  class Timeout {
    constructor(id) { this._id = id; this._ref = true; }
    ref() { this._ref = true; return this; }
    unref() { this._ref = false; return this; }
    hasRef() { return this._ref; }
    refresh() {
      const t = timers.find((x) => x.id === this._id);
      if (t) t.due = Date.now() + (t.repeat || t.delay);
      return this;
    }
    close() { clear(this); return this; }
    [Symbol.toPrimitive]() { return this._id; }
  }
  class Immediate extends Timeout {}
  define('setTimeout', (fn, ms, ...args) => new Timeout(addTimer(fn, ms, args, false)));
  define('setInterval', (fn, ms, ...args) => new Timeout(addTimer(fn, ms, args, true)));
  define('setImmediate', (fn, ...args) => new Immediate(addTimer(fn, 0, args, false)));
  const clear = (handle) => {
    const id = handle instanceof Timeout ? handle._id : Number(handle);
    timers = timers.filter((t) => t.id !== id);
  };
  define('clearTimeout', clear);
  define('clearInterval', clear);
  define('clearImmediate', clear);
  // Returns the delay (ms) before the next timer, or -1 when none.
  define('__nextTimerDelay', () => {
    if (!timers.length) return -1;
    const next = timers.reduce((a, b) => (b.due < a.due ? b : a));
    return Math.max(0, next.due - Date.now());
  });
  // An invocation's timers end with it: a timer it did not wait for must
  // not fire, or throw, inside the next invocation given this runtime.
  define('__clearTimers', () => { timers = []; });
  define('__runNextTimer', () => {
    if (!timers.length) return;
    const next = timers.reduce((a, b) => (b.due < a.due ? b : a));
    if (next.repeat) next.due = Math.max(next.due, Date.now()) + next.repeat;
    else clear(next.id);
    if (typeof next.fn === 'function') next.fn(...next.args);
  });

  // ---------------------------------------------------------------- Intl
  // QuickJS has no Intl. This is the part functions use: numbers (decimal,
  // percent, currency) with the separators of common locales, dates in any
  // IANA time zone (English patterns: en-US, en-GB; numeric patterns for a
  // few other languages; month and day names in English), collation close to
  // ICU's root order, English plural rules, relative times and lists.
  const canonLocale = (l) => {
    const s = String(l);
    if (!/^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$/.test(s)) throw new RangeError('Incorrect locale information provided');
    const [lang, ...rest] = s.split('-');
    return [lang.toLowerCase(), ...rest.map((p) => (p.length === 2 ? p.toUpperCase() : p.length === 4 ? p[0].toUpperCase() + p.slice(1).toLowerCase() : p))].join('-');
  };
  const pickLocale = (locales) => {
    const l = Array.isArray(locales) ? locales[0] : locales;
    return l === undefined || l === null ? 'en-US' : canonLocale(l);
  };
  const langOf = (locale) => locale.split('-')[0];
  // [grouping, decimal, minimum digits before grouping applies, where the
  // currency goes: 'after' the number, 'before' it, or 'space' (before, spaced)]
  const NUMBER_SYMBOLS = {
    en: [',', '.', 1, 'before'], ja: [',', '.', 1, 'before'], zh: [',', '.', 1, 'before'], ko: [',', '.', 1, 'before'], he: [',', '.', 1, 'after'], th: [',', '.', 1, 'before'],
    de: ['.', ',', 1, 'after'], it: ['.', ',', 1, 'after'], nl: ['.', ',', 1, 'space'], id: ['.', ',', 1, 'before'], da: ['.', ',', 1, 'after'], tr: ['.', ',', 1, 'before'], el: ['.', ',', 1, 'after'],
    es: ['.', ',', 2, 'after'], pt: ['.', ',', 1, 'space'], pl: ['\u00a0', ',', 2, 'after'],
    fr: ['\u202f', ',', 1, 'after'], sv: ['\u00a0', ',', 1, 'after'], nb: ['\u00a0', ',', 1, 'after'], no: ['\u00a0', ',', 1, 'after'], fi: ['\u00a0', ',', 1, 'after'],
    cs: ['\u00a0', ',', 1, 'after'], sk: ['\u00a0', ',', 1, 'after'], ru: ['\u00a0', ',', 1, 'after'], uk: ['\u00a0', ',', 1, 'after'], hu: ['\u00a0', ',', 1, 'after'], bg: ['\u00a0', ',', 1, 'after'],
  };
  const numberSymbols = (locale) => {
    if (locale === 'de-CH') return ["'", '.', 1, 'space'];
    if (locale === 'pt-PT') return ['\u00a0', ',', 2, 'after'];
    return NUMBER_SYMBOLS[langOf(locale)] || NUMBER_SYMBOLS.en;
  };
  const CURRENCY_SYMBOLS = { USD: '$', EUR: '€', GBP: '£', JPY: '¥', INR: '₹', CNY: 'CN¥', KRW: '₩', BRL: 'R$', CAD: 'CA$', AUD: 'A$', MXN: 'MX$', ILS: '₪', VND: '₫', NZD: 'NZ$', HKD: 'HK$', TWD: 'NT$', PHP: '₱' };
  // Units in their short English form (`unitDisplay: 'short'`, the default).
  const UNITS = {
    kilometer: 'km', meter: 'm', centimeter: 'cm', millimeter: 'mm', mile: 'mi', foot: 'ft', inch: 'in', yard: 'yd',
    kilogram: 'kg', gram: 'g', pound: 'lb', ounce: 'oz', liter: 'L', milliliter: 'mL', gallon: 'gal',
    second: 'sec', minute: 'min', hour: 'hr', day: ['day', 'days'], week: ['wk', 'wks'], month: ['mth', 'mths'], year: ['yr', 'yrs'],
    millisecond: 'ms', byte: 'byte', kilobyte: 'kB', megabyte: 'MB', gigabyte: 'GB', terabyte: 'TB',
    celsius: '°C', fahrenheit: '°F', percent: '%', 'kilometer-per-hour': 'km/h', 'mile-per-hour': 'mph',
  };
  // Symbols a currency has only in its own country's language.
  const LOCAL_CURRENCY_SYMBOLS = {
    ja: { JPY: '￥' }, tr: { TRY: '₺' }, ru: { RUB: '₽' }, pl: { PLN: 'zł' }, sv: { SEK: 'kr' }, nb: { NOK: 'kr' }, no: { NOK: 'kr' },
    da: { DKK: 'kr.' }, cs: { CZK: 'Kč' }, hu: { HUF: 'Ft' }, uk: { UAH: '₴' }, zh: { CNY: '¥' }, th: { THB: '฿' }, id: { IDR: 'Rp' },
  };
  const ZERO_DIGIT_CURRENCIES = ['JPY', 'KRW', 'VND', 'CLP', 'ISK', 'HUF', 'TWD'];
  // The digits of |x| rounded half away from zero at `frac` decimals, from
  // the shortest decimal that prints x (as ECMA-402 rounds, not toFixed).
  function roundDecimal(x, frac) {
    let [mant, exp] = Math.abs(x).toExponential().split('e');
    let digits = mant.replace('.', '');
    let point = Number(exp) + 1; // digits before the decimal point
    if (point < 0) { digits = '0'.repeat(-point) + digits; point = 0; }
    const keep = point + frac;
    if (digits.length < keep) digits += '0'.repeat(keep - digits.length);
    if (digits.length > keep) {
      const roundUp = digits.charCodeAt(keep) >= 53;
      digits = digits.slice(0, keep);
      if (roundUp) {
        const arr = digits.split('');
        let i = arr.length - 1;
        while (i >= 0 && arr[i] === '9') { arr[i] = '0'; i--; }
        if (i < 0) { arr.unshift('1'); point++; } else arr[i] = String(Number(arr[i]) + 1);
        digits = arr.join('');
      }
    }
    const int = digits.slice(0, point) || '0';
    return [int.replace(/^0+(?=\d)/, ''), digits.slice(point)];
  }
  class NumberFormat {
    constructor(locales, options) {
      const o = options || {};
      this._locale = pickLocale(locales);
      this._style = o.style || 'decimal';
      if (!['decimal', 'percent', 'currency', 'unit'].includes(this._style)) throw new RangeError('Value ' + this._style + ' out of range for Intl.NumberFormat options property style');
      if (this._style === 'currency' && !o.currency) throw new TypeError('Currency code is required with currency style.');
      this._currency = o.currency ? String(o.currency).toUpperCase() : undefined;
      this._currencyDisplay = o.currencyDisplay || 'symbol';
      this._unit = o.unit;
      const currencyDigits = this._currency && ZERO_DIGIT_CURRENCIES.includes(this._currency) ? 0 : 2;
      const defMin = this._style === 'currency' ? currencyDigits : 0;
      const defMax = this._style === 'currency' ? currencyDigits : this._style === 'percent' ? 0 : 3;
      this._minFrac = o.minimumFractionDigits !== undefined ? Number(o.minimumFractionDigits) : defMin;
      this._maxFrac = o.maximumFractionDigits !== undefined ? Number(o.maximumFractionDigits) : Math.max(defMax, this._minFrac);
      if (this._minFrac > this._maxFrac || this._maxFrac > 100) throw new RangeError('maximumFractionDigits value is out of range.');
      this._maxSig = o.maximumSignificantDigits;
      this._minInt = o.minimumIntegerDigits || 1;
      this._grouping = o.useGrouping !== false && o.useGrouping !== 'false';
      this._signDisplay = o.signDisplay || 'auto';
      this._currencySign = o.currencySign || 'standard';
      this._notation = o.notation || 'standard';
      if (!['standard', 'compact'].includes(this._notation)) throw new RangeError('switchyard: Intl.NumberFormat notation ' + this._notation + ' is not supported (standard and compact are)');
      this._compactDisplay = o.compactDisplay || 'short';
      this._fracGiven = o.minimumFractionDigits !== undefined || o.maximumFractionDigits !== undefined;
    }
    resolvedOptions() {
      return { locale: this._locale, numberingSystem: 'latn', style: this._style, currency: this._currency, minimumIntegerDigits: this._minInt,
        minimumFractionDigits: this._minFrac, maximumFractionDigits: this._maxFrac, useGrouping: this._grouping ? 'auto' : false, notation: this._notation, signDisplay: this._signDisplay };
    }
    formatToParts(value) {
      let x = typeof value === 'bigint' ? Number(value) : Number(value);
      const [group, decimal, minGroup, currencyAt] = numberSymbols(this._locale);
      const parts = [];
      const negative = x < 0 || Object.is(x, -0);
      if (Number.isNaN(x)) return [{ type: 'nan', value: 'NaN' }];
      if (this._style === 'percent') x *= 100;
      const body = [];
      let compact = '';
      if (!Number.isFinite(x)) body.push({ type: 'infinity', value: '∞' });
      else {
        let maxFrac = this._maxFrac, minFrac = this._minFrac;
        if (this._notation === 'compact') {
          // English abbreviations (K, M, B, T); without digit options a
          // one-digit mantissa keeps one decimal (1.2M), others none (12K).
          const round = (v) => (this._fracGiven ? v : Number(roundDecimal(v, v < 10 ? 1 : 0).join('.')));
          let exp = 0;
          let abs = Math.abs(x);
          while (exp < 12 && abs >= 10 ** (exp + 3)) exp += 3;
          let scaled = round(abs / 10 ** exp);
          if (scaled >= 1000 && exp < 12) { exp += 3; scaled = round(abs / 10 ** exp); }
          if (!this._fracGiven) { maxFrac = scaled < 10 ? 1 : 0; minFrac = 0; }
          x = negative ? -scaled : scaled;
          if (exp) compact = this._compactDisplay === 'long' ? ' ' + ['thousand', 'million', 'billion', 'trillion'][exp / 3 - 1] : 'KMBT'[exp / 3 - 1];
        }
        let int, frac;
        if (this._maxSig) {
          [int, frac] = roundDecimal(Number(Math.abs(x).toPrecision(Math.min(21, this._maxSig))), 20);
          frac = frac.replace(/0+$/, '');
        } else {
          [int, frac] = roundDecimal(x, maxFrac);
          while (frac.length > minFrac && frac.endsWith('0')) frac = frac.slice(0, -1);
        }
        int = int.padStart(this._minInt, '0');
        const groupIt = this._grouping && int.length >= 4 && int.length >= 3 + minGroup && (this._notation !== 'compact' || int.length >= 5);
        if (groupIt && /-IN$/.test(this._locale)) {
          // Indian grouping: the last three digits, then pairs (1,23,45,678).
          const head = int.slice(0, -3);
          const first = head.length % 2 || 2;
          body.push({ type: 'integer', value: head.slice(0, first) });
          for (let i = first; i < head.length; i += 2) { body.push({ type: 'group', value: group }); body.push({ type: 'integer', value: head.slice(i, i + 2) }); }
          body.push({ type: 'group', value: group }, { type: 'integer', value: int.slice(-3) });
        } else if (groupIt) {
          const first = int.length % 3 || 3;
          body.push({ type: 'integer', value: int.slice(0, first) });
          for (let i = first; i < int.length; i += 3) { body.push({ type: 'group', value: group }); body.push({ type: 'integer', value: int.slice(i, i + 3) }); }
        } else body.push({ type: 'integer', value: int });
        if (frac) { body.push({ type: 'decimal', value: decimal }); body.push({ type: 'fraction', value: frac }); }
        if (compact) body.push({ type: 'compact', value: compact });
      }
      const isZero = body.every((p) => (p.type !== 'integer' && p.type !== 'fraction') || /^0*$/.test(p.value));
      let sign = '';
      switch (this._signDisplay) {
        case 'never': break;
        case 'always': sign = negative ? '-' : '+'; break;
        case 'exceptZero': sign = isZero ? '' : negative ? '-' : '+'; break;
        case 'negative': sign = negative && !isZero ? '-' : ''; break;
        default: sign = negative ? '-' : '';
      }
      if (this._style === 'currency') {
        const symbol = this._currencyDisplay === 'code' ? this._currency
          : this._currencyDisplay === 'name' ? this._currency
          : this._locale === 'en-CA' && this._currency === 'CAD' ? '$'
          : this._locale === 'en-AU' && this._currency === 'AUD' ? '$'
          : (LOCAL_CURRENCY_SYMBOLS[langOf(this._locale)] || {})[this._currency] || CURRENCY_SYMBOLS[this._currency] || this._currency;
        // English accounting format: a negative amount in parentheses.
        const accounting = sign === '-' && this._currencySign === 'accounting' && langOf(this._locale) === 'en';
        if (accounting) parts.push({ type: 'literal', value: '(' });
        else if (sign) parts.push({ type: sign === '-' ? 'minusSign' : 'plusSign', value: sign });
        if (currencyAt === 'after') {
          parts.push(...body, { type: 'literal', value: '\u00a0' }, { type: 'currency', value: symbol });
        } else {
          parts.push({ type: 'currency', value: symbol });
          if (currencyAt === 'space' || /^[A-Z]{3}$/.test(symbol)) parts.push({ type: 'literal', value: '\u00a0' });
          parts.push(...body);
        }
        if (accounting) parts.push({ type: 'literal', value: ')' });
        return parts;
      }
      if (sign) parts.push({ type: sign === '-' ? 'minusSign' : 'plusSign', value: sign });
      parts.push(...body);
      if (this._style === 'unit') {
        const abs = Math.abs(x);
        const unit = UNITS[this._unit];
        parts.push({ type: 'literal', value: ' ' }, { type: 'unit', value: unit ? (Array.isArray(unit) ? unit[abs === 1 ? 0 : 1] : unit) : String(this._unit) });
      }
      if (this._style === 'percent') {
        const lang = langOf(this._locale);
        if (['fr', 'de', 'sv', 'nb', 'no', 'fi', 'cs', 'sk', 'ru', 'uk', 'da', 'pl', 'es'].includes(lang)) parts.push({ type: 'literal', value: '\u00a0' });
        parts.push({ type: 'percentSign', value: '%' });
      }
      return parts;
    }
    static supportedLocalesOf(l) { return (Array.isArray(l) ? l : l === undefined ? [] : [l]).map(canonLocale); }
  }
  Object.defineProperty(NumberFormat.prototype, 'format', {
    get() { const f = (v) => NumberFormat.prototype.formatToParts.call(this, v).map((p) => p.value).join(''); return f; },
    configurable: true,
  });

  const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];
  const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];
  // Numeric date patterns: [order, separator, pad day and month, 24-hour, date–time joiner].
  const DATE_PATTERNS = {
    'en-US': ['mdy', '/', false, false, ', '], en: ['mdy', '/', false, false, ', '],
    'en-GB': ['dmy', '/', true, true, ', '], 'en-AU': ['dmy', '/', true, false, ', '], 'en-IN': ['dmy', '/', false, false, ', '], 'en-CA': ['ymd', '-', true, false, ', '],
    de: ['dmy', '.', false, true, ', '], fr: ['dmy', '/', true, true, ' '], es: ['dmy', '/', false, true, ', '], it: ['dmy', '/', false, true, ', '],
    nl: ['dmy', '-', false, true, ', '], pt: ['dmy', '/', true, true, ', '], sv: ['ymd', '-', true, true, ' '], ja: ['ymd', '/', false, true, ' '],
    zh: ['ymd', '/', false, true, ' '], pl: ['dmy', '.', true, true, ', '], ru: ['dmy', '.', true, true, ', '], da: ['dmy', '.', false, true, ' '],
  };
  const datePattern = (locale) => DATE_PATTERNS[locale] || DATE_PATTERNS[langOf(locale)] || DATE_PATTERNS.en;
  const two = (n) => String(n).padStart(2, '0');
  function zoneAt(name, ms) {
    const info = host.timeZone(name, ms);
    if (info === null || info === undefined) throw new RangeError('Invalid time zone specified: ' + name);
    return JSON.parse(info);
  }
  function gmtName(offsetSeconds) {
    if (!offsetSeconds) return 'GMT';
    const sign = offsetSeconds < 0 ? '-' : '+';
    const abs = Math.abs(offsetSeconds);
    const h = Math.floor(abs / 3600);
    const m = Math.floor((abs % 3600) / 60);
    return 'GMT' + sign + h + (m ? ':' + two(m) : '');
  }
  const US_ZONE_NAMES = ['EST', 'EDT', 'CST', 'CDT', 'MST', 'MDT', 'PST', 'PDT', 'AKST', 'AKDT', 'HST', 'HDT'];
  const GB_ZONE_NAMES = ['GMT', 'BST', 'CET', 'CEST', 'EET', 'EEST', 'WET', 'WEST'];
  const DATE_STYLES = {
    full: { weekday: 'long', year: 'numeric', month: 'long', day: 'numeric' },
    long: { year: 'numeric', month: 'long', day: 'numeric' },
    medium: { year: 'numeric', month: 'short', day: 'numeric' },
    short: { year: '2-digit', month: 'numeric', day: 'numeric' },
  };
  const TIME_STYLES = {
    full: { hour: 'numeric', minute: '2-digit', second: '2-digit', timeZoneName: 'short' },
    long: { hour: 'numeric', minute: '2-digit', second: '2-digit', timeZoneName: 'short' },
    medium: { hour: 'numeric', minute: '2-digit', second: '2-digit' },
    short: { hour: 'numeric', minute: '2-digit' },
  };
  class DateTimeFormat {
    constructor(locales, options, defaults) {
      const o = Object.assign({}, options || {});
      this._locale = pickLocale(locales);
      this._timeZone = o.timeZone === undefined ? 'UTC' : zoneAt(String(o.timeZone), 0).name;
      const fields = ['weekday', 'year', 'month', 'day', 'hour', 'minute', 'second'];
      this._styled = !!(o.dateStyle || o.timeStyle);
      if (this._styled) {
        if (fields.some((f) => o[f] !== undefined)) throw new TypeError("Can't set option " + fields.find((f) => o[f] !== undefined) + ' when dateStyle or timeStyle is used');
        if (o.dateStyle) Object.assign(o, DATE_STYLES[o.dateStyle]);
        if (o.timeStyle) Object.assign(o, TIME_STYLES[o.timeStyle]);
      } else if (!fields.some((f) => o[f] !== undefined)) {
        const d = defaults || 'date';
        if (d === 'date' || d === 'all') Object.assign(o, { year: 'numeric', month: 'numeric', day: 'numeric' });
        if (d === 'time' || d === 'all') Object.assign(o, { hour: 'numeric', minute: '2-digit', second: '2-digit' });
      }
      const pattern = datePattern(this._locale);
      const h12 = o.hourCycle ? o.hourCycle === 'h12' || o.hourCycle === 'h11' : o.hour12 !== undefined ? !!o.hour12 : !pattern[3];
      this._o = o;
      this._h12 = h12;
      this._pattern = pattern;
      this._dateStyle = o.dateStyle;
    }
    resolvedOptions() {
      const out = { locale: this._locale, calendar: 'gregory', numberingSystem: 'latn', timeZone: this._timeZone };
      for (const f of ['weekday', 'year', 'month', 'day', 'hour', 'minute', 'second', 'timeZoneName', 'dateStyle', 'timeStyle']) if (this._o[f] !== undefined) out[f] = this._o[f];
      if (this._o.hour !== undefined) { out.hour12 = this._h12; out.hourCycle = this._h12 ? 'h12' : 'h23'; }
      return out;
    }
    formatToParts(date) {
      const ms = date === undefined ? Date.now() : date instanceof Date ? date.getTime() : Number(date);
      if (!Number.isFinite(ms)) throw new RangeError('Invalid time value');
      const zone = zoneAt(this._timeZone, ms);
      const t = new Date(ms + zone.offset * 1000);
      const Y = t.getUTCFullYear(), M = t.getUTCMonth(), D = t.getUTCDate(), W = t.getUTCDay();
      const h = t.getUTCHours(), m = t.getUTCMinutes(), s = t.getUTCSeconds();
      const o = this._o;
      const [order, sep, pad, , joiner] = this._pattern;
      const parts = [];
      const lit = (v) => parts.push({ type: 'literal', value: v });
      const textual = o.month === 'long' || o.month === 'short' || o.month === 'narrow';
      const yearText = o.year === '2-digit' ? two(Y % 100) : String(Y);
      const monthText = o.month === 'long' ? MONTHS[M] : o.month === 'short' ? MONTHS[M].slice(0, 3) : o.month === 'narrow' ? MONTHS[M][0]
        : o.month === '2-digit' || (pad && o.month) ? two(M + 1) : String(M + 1);
      const dayText = o.day === '2-digit' || (pad && o.day && !textual) ? two(D) : String(D);
      const weekdayText = o.weekday === 'long' ? DAYS[W] : o.weekday === 'short' ? DAYS[W].slice(0, 3) : o.weekday === 'narrow' ? DAYS[W][0] : null;
      const hasDate = o.year || o.month || o.day || o.weekday;
      if (hasDate) {
        if (textual) {
          const dayFirst = order === 'dmy';
          if (weekdayText) { parts.push({ type: 'weekday', value: weekdayText }); lit(', '); }
          if (dayFirst) {
            if (o.day) { parts.push({ type: 'day', value: dayText }); lit(' '); }
            parts.push({ type: 'month', value: monthText });
            if (o.year) { lit(' '); parts.push({ type: 'year', value: yearText }); }
          } else {
            parts.push({ type: 'month', value: monthText });
            if (o.day) { lit(' '); parts.push({ type: 'day', value: dayText }); }
            if (o.year) { lit(o.day ? ', ' : ' '); parts.push({ type: 'year', value: yearText }); }
          }
        } else {
          if (weekdayText) { parts.push({ type: 'weekday', value: weekdayText }); if (o.year || o.month || o.day) lit(', '); }
          const fields = { y: o.year && ['year', yearText], m: o.month && ['month', monthText], d: o.day && ['day', dayText] };
          const present = order.split('').map((k) => fields[k]).filter(Boolean);
          present.forEach(([type, value], i) => { if (i) lit(sep); parts.push({ type, value }); });
        }
      }
      if (o.hour || o.minute || o.second) {
        // English joins a long date to its time with " at ", a short one
        // (an abbreviated month, medium and short styles) with a comma.
        const longDate = this._dateStyle ? this._dateStyle === 'full' || this._dateStyle === 'long' : o.month === 'long';
        if (hasDate) lit(textual && longDate && this._locale.startsWith('en') ? ' at ' : joiner);
        const timeParts = [];
        if (o.hour) {
          const hour = this._h12 ? h % 12 || 12 : h;
          timeParts.push({ type: 'hour', value: o.hour === '2-digit' || (!this._h12) ? two(hour) : String(hour) });
        }
        if (o.minute) timeParts.push({ type: 'minute', value: o.hour ? two(m) : String(m) });
        if (o.second) timeParts.push({ type: 'second', value: o.hour || o.minute ? two(s) : String(s) });
        timeParts.forEach((p, i) => { if (i) lit(':'); parts.push(p); });
        if (o.hour && this._h12) { lit(' '); parts.push({ type: 'dayPeriod', value: h < 12 ? 'AM' : 'PM' }); }
      }
      if (o.timeZoneName) {
        lit(' ');
        // A locale names only the zones its readers know by abbreviation
        // (as ICU does); the others are shown by their offset.
        const known = this._locale === 'en-GB' ? GB_ZONE_NAMES : langOf(this._locale) === 'en' ? US_ZONE_NAMES : [];
        const value = zone.name === 'UTC' && !o.timeZoneName.endsWith('Offset') ? 'UTC'
          : known.includes(zone.abbr) && !o.timeZoneName.endsWith('Offset') ? zone.abbr : gmtName(zone.offset);
        parts.push({ type: 'timeZoneName', value });
      }
      return parts;
    }
    formatRange(a, b) { return this.format(a) + ' – ' + this.format(b); }
    static supportedLocalesOf(l) { return NumberFormat.supportedLocalesOf(l); }
  }
  Object.defineProperty(DateTimeFormat.prototype, 'format', {
    get() { return (d) => DateTimeFormat.prototype.formatToParts.call(this, d).map((p) => p.value).join(''); },
    configurable: true,
  });

  // Close to ICU's root collation: letters compared without accents or case
  // first, then accents, then lowercase before uppercase.
  const baseLetters = (s) => s.normalize('NFD').replace(/[\u0300-\u036f]/g, '');
  class Collator {
    constructor(locales, options) {
      const o = options || {};
      this._locale = pickLocale(locales);
      this._sensitivity = o.sensitivity || 'variant';
      this._numeric = !!o.numeric;
      this._ignorePunctuation = !!o.ignorePunctuation;
      this.compare = this.compare.bind(this);
    }
    compare(a, b) {
      a = String(a); b = String(b);
      if (this._ignorePunctuation) { a = a.replace(/[\s\p{P}]/gu, ''); b = b.replace(/[\s\p{P}]/gu, ''); }
      const cmp = (x, y) => {
        if (this._numeric) {
          const xs = x.match(/\d+|\D+/g) || [], ys = y.match(/\d+|\D+/g) || [];
          for (let i = 0; i < Math.min(xs.length, ys.length); i++) {
            const p = xs[i], q = ys[i];
            if (/^\d/.test(p) && /^\d/.test(q)) { const d = Number(p) - Number(q); if (d) return d < 0 ? -1 : 1; }
            else if (p !== q) return p < q ? -1 : 1;
          }
          return xs.length === ys.length ? 0 : xs.length < ys.length ? -1 : 1;
        }
        return x === y ? 0 : x < y ? -1 : 1;
      };
      const primary = cmp(baseLetters(a).toLowerCase(), baseLetters(b).toLowerCase());
      if (primary || this._sensitivity === 'base') return primary;
      const secondary = cmp(a.toLowerCase(), b.toLowerCase());
      if (secondary || this._sensitivity === 'accent') return secondary;
      for (let i = 0; i < Math.min(a.length, b.length); i++) {
        if (a[i] !== b[i]) return a[i] === a[i].toLowerCase() ? -1 : 1;
      }
      return cmp(a, b);
    }
    resolvedOptions() { return { locale: this._locale, usage: 'sort', sensitivity: this._sensitivity, numeric: this._numeric, ignorePunctuation: this._ignorePunctuation }; }
    static supportedLocalesOf(l) { return NumberFormat.supportedLocalesOf(l); }
  }
  class PluralRules {
    constructor(locales, options) { this._locale = pickLocale(locales); this._type = (options && options.type) || 'cardinal'; }
    select(n) {
      n = Number(n);
      if (this._type === 'ordinal') {
        const ten = n % 10, hundred = n % 100;
        if (ten === 1 && hundred !== 11) return 'one';
        if (ten === 2 && hundred !== 12) return 'two';
        if (ten === 3 && hundred !== 13) return 'few';
        return 'other';
      }
      return n === 1 ? 'one' : 'other';
    }
    resolvedOptions() { return { locale: this._locale, type: this._type }; }
    static supportedLocalesOf(l) { return NumberFormat.supportedLocalesOf(l); }
  }
  const RELATIVE_WORDS = { day: ['yesterday', 'today', 'tomorrow'], year: ['last year', 'this year', 'next year'], month: ['last month', 'this month', 'next month'],
    week: ['last week', 'this week', 'next week'], quarter: ['last quarter', 'this quarter', 'next quarter'] };
  class RelativeTimeFormat {
    constructor(locales, options) { this._locale = pickLocale(locales); this._numeric = (options && options.numeric) || 'always'; }
    format(value, unit) {
      value = Number(value);
      unit = String(unit).replace(/s$/, '');
      if (!['second', 'minute', 'hour', 'day', 'week', 'month', 'quarter', 'year'].includes(unit)) throw new RangeError('Invalid unit argument for format() \'' + unit + '\'');
      if (this._numeric === 'auto') {
        if (unit === 'second' && value === 0) return 'now';
        if (RELATIVE_WORDS[unit] && [-1, 0, 1].includes(value)) return RELATIVE_WORDS[unit][value + 1];
      }
      const abs = Math.abs(value);
      const text = new NumberFormat(this._locale).format(abs) + ' ' + unit + (abs === 1 ? '' : 's');
      return value < 0 || Object.is(value, -0) ? text + ' ago' : 'in ' + text;
    }
    resolvedOptions() { return { locale: this._locale, style: 'long', numeric: this._numeric, numberingSystem: 'latn' }; }
  }
  class ListFormat {
    constructor(locales, options) { this._locale = pickLocale(locales); this._type = (options && options.type) || 'conjunction'; }
    format(list) {
      const items = [...list].map(String);
      const word = this._type === 'disjunction' ? 'or' : 'and';
      if (this._type === 'unit') return items.join(', ');
      if (items.length < 3) return items.join(' ' + word + ' ');
      return items.slice(0, -1).join(', ') + ', ' + word + ' ' + items[items.length - 1];
    }
  }
  // These three may be called without `new`, as the specification allows.
  const callable = (C) => {
    const F = function (locales, options) { return new C(locales, options); };
    F.prototype = C.prototype;
    F.supportedLocalesOf = C.supportedLocalesOf;
    Object.defineProperty(F, 'name', { value: C.name });
    return F;
  };
  const Intl = {
    NumberFormat: callable(NumberFormat), DateTimeFormat: callable(DateTimeFormat), Collator: callable(Collator),
    PluralRules, RelativeTimeFormat, ListFormat,
    getCanonicalLocales: (l) => NumberFormat.supportedLocalesOf(l),
    supportedValuesOf: (key) => (key === 'timeZone' ? ['UTC'] : []),
  };
  define('Intl', Intl);
  const protoMethod = (proto, name, fn) => Object.defineProperty(proto, name, { value: fn, writable: true, configurable: true, enumerable: false });
  protoMethod(Number.prototype, 'toLocaleString', function (locales, options) { return new NumberFormat(locales, options).format(this); });
  protoMethod(Date.prototype, 'toLocaleString', function (locales, options) {
    return Number.isNaN(this.getTime()) ? 'Invalid Date' : new DateTimeFormat(locales, options, 'all').format(this);
  });
  protoMethod(Date.prototype, 'toLocaleDateString', function (locales, options) {
    return Number.isNaN(this.getTime()) ? 'Invalid Date' : new DateTimeFormat(locales, options, 'date').format(this);
  });
  protoMethod(Date.prototype, 'toLocaleTimeString', function (locales, options) {
    return Number.isNaN(this.getTime()) ? 'Invalid Date' : new DateTimeFormat(locales, options, 'time').format(this);
  });
  // The runtime's clock is UTC; V8 names the zone after the offset.
  for (const name of ['toString', 'toTimeString']) {
    const original = Date.prototype[name];
    protoMethod(Date.prototype, name, function () {
      const text = original.call(this);
      return Number.isNaN(this.getTime()) ? text : text + ' (Coordinated Universal Time)';
    });
  }
  // Turkish and Azeri dotted and dotless i; other languages case as
  // toUpperCase/toLowerCase do.
  const turkic = (locales) => /^(tr|az)(-|$)/i.test(String(Array.isArray(locales) ? locales[0] : locales || ''));
  protoMethod(String.prototype, 'toLocaleUpperCase', function (locales) {
    const str = String(this);
    return turkic(locales) ? str.replace(/i/g, '\u0130').toUpperCase() : str.toUpperCase();
  });
  protoMethod(String.prototype, 'toLocaleLowerCase', function (locales) {
    const str = String(this);
    return turkic(locales) ? str.replace(/I/g, '\u0131').replace(/\u0130/g, 'i').toLowerCase() : str.toLowerCase();
  });
  protoMethod(String.prototype, 'localeCompare', function (other, locales, options) { return new Collator(locales, options).compare(String(this), other); });

  // ---------------------------------------------------------------- console
  // An error's stack without the runtime's own frames (an error class's
  // constructor, fetch): they say nothing about the function.
  const functionFrames = (err) =>
    String(err.stack || '').split('\n').filter((l) => !l.includes('switchyard-prelude.js')).join('\n');
  // Values as Node's util.inspect prints them (what console.log shows in
  // Segment's logs): `{ a: 1, b: 'x' }`, `[ 1, 2 ]`, `Map(1) { 'k' => 1 }`,
  // nesting past two levels as `[Object]`, long ones over several lines.
  const IDENTIFIER = /^[A-Za-z_$][A-Za-z0-9_$]*$/;
  // Single quotes, or the first kind the string does not contain, as Node.
  const quote = (str) => {
    const mark = !str.includes("'") ? "'" : !str.includes('"') ? '"' : !str.includes('`') ? '`' : "'";
    const escaped = str.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
    return mark + (mark === "'" ? escaped.replace(/'/g, "\\'") : escaped) + mark;
  };
  // Arrays of more than six items go in columns, padded, as Node lays them
  // out (`indent`: the spaces the array starts at).
  function groupItems(items, indent, values) {
    const more = /^\.\.\. \d+ more items?$/.test(items[items.length - 1]) ? 1 : 0;
    const n = items.length - more;
    const lens = items.slice(0, n).map((e) => e.length);
    const total = lens.reduce((a, l) => a + l + 2, 0);
    const maxLen = lens.reduce((a, l) => Math.max(a, l), 0);
    const actualMax = maxLen + 2;
    if (!(actualMax * 3 + indent < 80 && (total / actualMax > 5 || maxLen <= 6))) return items;
    const bias = Math.sqrt(actualMax - total / items.length);
    const biasedMax = Math.max(actualMax - 3 - bias, 1);
    const columns = Math.min(Math.round(Math.sqrt(2.5 * biasedMax * n) / biasedMax), Math.floor((80 - indent) / actualMax), 12, 15);
    if (columns <= 1) return items;
    const widths = [];
    for (let c = 0; c < columns; c++) {
      let w = 0;
      for (let j = c; j < n; j += columns) w = Math.max(w, lens[j]);
      widths.push(w + 2);
    }
    const numeric = n <= values.length && values.slice(0, n).every((x) => typeof x === 'number' || typeof x === 'bigint');
    const rows = [];
    for (let i = 0; i < n; i += columns) {
      const last = Math.min(i + columns, n) - 1;
      let row = '';
      for (let j = i; j < last; j++) row += numeric ? (items[j] + ', ').padStart(widths[j - i]) : (items[j] + ', ').padEnd(widths[j - i]);
      row += numeric ? items[last].padStart(widths[last - i] - 2) : items[last];
      rows.push(row);
    }
    if (more) rows.push(items[n]);
    return rows;
  }
  // The level of the container whose entries were last laid out: as in
  // Node, one holding three or more levels below it (along its last
  // entries) is never put on one line.
  let lastLevel = 0;
  // `hidden`: Node's showHidden (`%o`), which adds an array's length.
  function inspect(v, depth, seen, circular, maxDepth, hidden) {
    if (maxDepth === undefined) maxDepth = 2;
    seen = seen || [];
    circular = circular || new Set();
    switch (typeof v) {
      case 'string': return quote(v);
      case 'number': return Object.is(v, -0) ? '-0' : String(v);
      case 'bigint': return v + 'n';
      case 'undefined': return 'undefined';
      case 'boolean': case 'symbol': return String(v);
      case 'function': {
        const source = Function.prototype.toString.call(v);
        if (source.startsWith('class')) return '[class ' + (v.name || '(anonymous)') + ']';
        return v.name ? '[Function: ' + v.name + ']' : '[Function (anonymous)]';
      }
    }
    if (v === null) return 'null';
    if (seen.includes(v)) { circular.add(v); return '[Circular *1]'; }
    if (v instanceof Date) return Number.isNaN(v.getTime()) ? 'Invalid Date' : v.toISOString();
    if (v instanceof RegExp) return String(v);
    if (v instanceof Error) {
      const head = (v.name || 'Error') + ': ' + v.message;
      const frames = functionFrames(v).split('\n').filter((l) => l.trim());
      return depth > 0 ? '[' + head + ']' : [head, ...frames].join('\n');
    }
    if (v instanceof Promise) return 'Promise { <pending> }';
    const nested = (x) => inspect(x, depth + 1, seen.concat([v]), circular, maxDepth, hidden);
    const ctorName = v.constructor && v.constructor.name;
    if (v instanceof Buffer) {
      const shown = Array.from(v.subarray(0, 50), (b) => (b < 16 ? '0' : '') + b.toString(16)).join(' ');
      return '<Buffer' + (shown ? ' ' + shown : '') + (v.length > 50 ? ' ... ' + (v.length - 50) + ' more bytes' : '') + '>';
    }
    let start, end, entries, values;
    if (Array.isArray(v) || ArrayBuffer.isView(v)) {
      if (depth > maxDepth) return '[Array]';
      values = Array.from(v).slice(0, 100);
      if (v.length) lastLevel = depth;
      entries = values.map(nested);
      if (v.length > 100) entries.push('... ' + (v.length - 100) + ' more item' + (v.length - 100 > 1 ? 's' : ''));
      if (hidden && Array.isArray(v)) entries.push('[length]: ' + v.length);
      start = Array.isArray(v) ? (ctorName && ctorName !== 'Array' ? ctorName + '(' + v.length + ') [' : '[') : ctorName + '(' + v.length + ') [';
      end = ']';
    } else if (v instanceof Map) {
      if (depth > maxDepth) return '[Map]';
      if (v.size) lastLevel = depth;
      entries = [...v].map(([k, x]) => nested(k) + ' => ' + nested(x));
      start = 'Map(' + v.size + ') {';
      end = '}';
    } else if (v instanceof Set) {
      if (depth > maxDepth) return '[Set]';
      if (v.size) lastLevel = depth;
      entries = [...v].map(nested);
      start = 'Set(' + v.size + ') {';
      end = '}';
    } else {
      const named = ctorName && ctorName !== 'Object' ? ctorName + ' ' : Object.getPrototypeOf(v) === null ? '[Object: null prototype] ' : '';
      if (depth > maxDepth) return named ? '[' + named.trim() + ']' : '[Object]';
      if (Object.keys(v).length) lastLevel = depth;
      entries = Object.keys(v).map((k) => (IDENTIFIER.test(k) ? k : quote(k)) + ': ' + nested(v[k]));
      start = named + '{';
      end = '}';
    }
    if (!entries.length) return start + end;
    if (circular.has(v)) start = '<ref *1> ' + start;
    const pad = '  '.repeat(depth + 1);
    if (values && entries.length > 6) {
      const rows = groupItems(entries, 2 * depth, values);
      if (rows.length !== entries.length) return start + '\n' + rows.map((e) => pad + e).join(',\n') + '\n' + '  '.repeat(depth) + end;
    }
    const oneLine = start + ' ' + entries.join(', ') + ' ' + end;
    if (lastLevel - depth < 3 && oneLine.length <= 72 && !oneLine.includes('\n')) return oneLine;
    return start + '\n' + entries.map((e) => pad + e).join(',\n') + '\n' + '  '.repeat(depth) + end;
  }
  // A value printed by console.log or util.format: strings as they are.
  const show = (v) => (typeof v === 'string' ? v : inspect(v, 0));
  const logAt = (level) => (...args) => host.log(level, formatArgs(...args));
  define('console', {
    log: logAt('info'), info: logAt('info'), debug: logAt('debug'),
    warn: logAt('warn'), error: logAt('error'), trace: logAt('debug'),
    dir: (v) => logAt('info')(v), table: (v) => logAt('info')(v),
  });

  // ---------------------------------------------------------------- modules
  function loadVendored(name, extraRequire) {
    const module = { exports: {} };
    const fn = new Function('module', 'exports', 'require', 'global', 'process', host.vendorSource(name));
    fn.call(module.exports, module, module.exports, extraRequire || req, G, processShim);
    return module.exports;
  }
  const processShim = { env: {}, nextTick: (fn, ...a) => Promise.resolve().then(() => fn(...a)), version: 'v18.0.0', versions: {}, platform: 'linux' };
  let lodash;
  let loadingLodash = false;
  Object.defineProperty(G, '_', {
    configurable: true,
    get() {
      // lodash itself reads the global `_` while loading (for noConflict).
      if (loadingLodash) return undefined;
      if (!lodash) {
        loadingLodash = true;
        try { lodash = loadVendored('lodash'); } finally { loadingLodash = false; }
      }
      return lodash;
    },
    set(v) { if (!loadingLodash) Object.defineProperty(G, '_', { value: v, writable: true, configurable: true }); },
  });
  let xmlModule;
  const loadXml = () => {
    if (!xmlModule) {
      const escape = loadVendored('xml/escapeForXML');
      xmlModule = loadVendored('xml', (n) => {
        if (n === './escapeForXML') return escape;
        if (n === 'stream') return { Stream: class Stream { emit() {} pause() {} resume() {} } };
        return req(n);
      });
    }
    return xmlModule;
  };
  Object.defineProperty(G, 'xml', { configurable: true, get() { return loadXml(); } });
  // Node's `querystring`: repeated keys are arrays, spaces are %20.
  const qsUnescape = (s) => { try { return decodeURIComponent(s); } catch (_) { return unescape(s); } };
  const qsValue = (v) => (typeof v === 'string' ? v
    : (typeof v === 'number' && isFinite(v)) || typeof v === 'boolean' || typeof v === 'bigint' ? String(v) : '');
  const querystring = {
    escape: (s) => encodeURIComponent(s),
    unescape: qsUnescape,
    stringify(obj, sep, eq) {
      sep = sep || '&'; eq = eq || '=';
      if (obj === null || typeof obj !== 'object') return '';
      return Object.keys(obj).map((k) => {
        const key = encodeURIComponent(qsValue(k)) + eq;
        const v = obj[k];
        return Array.isArray(v) ? v.map((x) => key + encodeURIComponent(qsValue(x))).join(sep) : key + encodeURIComponent(qsValue(v));
      }).filter((p) => p !== '').join(sep);
    },
    parse(str, sep, eq, options) {
      sep = sep || '&'; eq = eq || '=';
      const out = Object.create(null);
      if (typeof str !== 'string' || str.length === 0) return out;
      const max = options && typeof options.maxKeys === 'number' ? options.maxKeys : 1000;
      let parts = str.split(sep);
      if (max > 0) parts = parts.slice(0, max);
      for (const part of parts) {
        if (!part) continue;
        const i = part.indexOf(eq);
        const k = qsUnescape((i < 0 ? part : part.slice(0, i)).replace(/\+/g, ' '));
        const v = i < 0 ? '' : qsUnescape(part.slice(i + eq.length).replace(/\+/g, ' '));
        if (!(k in out)) out[k] = v;
        else if (Array.isArray(out[k])) out[k].push(v);
        else out[k] = [out[k], v];
      }
      return out;
    },
  };
  querystring.encode = querystring.stringify;
  querystring.decode = querystring.parse;
  // Node's `url`: WHATWG URL, plus the legacy parse/format/resolve.
  const SLASHED = ['http:', 'https:', 'ftp:', 'ws:', 'wss:', 'file:'];
  const urlModule = {
    URL,
    URLSearchParams,
    parse(str, parseQuery) {
      str = String(str).trim();
      const absolute = /^[a-zA-Z][a-zA-Z0-9+.-]*:/.test(str);
      const out = { protocol: null, slashes: null, auth: null, host: null, port: null, hostname: null, hash: null, search: null, query: parseQuery ? Object.create(null) : null, pathname: null, path: null, href: str };
      let u;
      try { u = absolute ? new URL(str) : new URL(str, 'http://relative.invalid'); } catch (_) { u = null; }
      if (!u) { out.pathname = str; out.path = str; return out; }
      if (absolute) {
        out.protocol = u.protocol;
        out.slashes = str.slice(u.protocol.length, u.protocol.length + 2) === '//' ? true : null;
        out.auth = u.username ? qsUnescape(u.username) + (u.password ? ':' + qsUnescape(u.password) : '') : null;
        out.host = u.host;
        out.port = u.port || null;
        out.hostname = u.hostname;
      }
      out.hash = u.hash || null;
      out.search = u.search || null;
      if (parseQuery) out.query = querystring.parse(u.search.slice(1));
      else out.query = u.search ? u.search.slice(1) : null;
      out.pathname = u.pathname;
      out.path = u.pathname + u.search;
      out.href = absolute ? u.href : u.pathname + u.search + u.hash;
      return out;
    },
    format(obj) {
      if (typeof obj === 'string') obj = urlModule.parse(obj);
      if (obj instanceof URL) return obj.href;
      const protocol = obj.protocol ? (obj.protocol.endsWith(':') ? obj.protocol : obj.protocol + ':') : '';
      const host = obj.host || (obj.hostname ? obj.hostname + (obj.port ? ':' + obj.port : '') : '');
      const slashes = obj.slashes || SLASHED.includes(protocol) ? '//' : '';
      const auth = obj.auth ? encodeURIComponent(obj.auth).replace(/%3A/i, ':') + '@' : '';
      let search = obj.search || '';
      if (!search && obj.query && typeof obj.query === 'object') {
        const q = querystring.stringify(obj.query);
        search = q ? '?' + q : '';
      }
      if (search && !search.startsWith('?')) search = '?' + search;
      let hash = obj.hash || '';
      if (hash && !hash.startsWith('#')) hash = '#' + hash;
      let pathname = obj.pathname || '';
      if (host && pathname && !pathname.startsWith('/')) pathname = '/' + pathname;
      return protocol + (host || protocol === 'file:' ? slashes : '') + auth + host + pathname + search + hash;
    },
    resolve: (from, to) => new URL(to, new URL(from, 'resolve://')).href.replace(/^resolve:\/\//, ''),
  };
  // Node's `zlib`, one-shot: `gzipSync`…, and the callback forms.
  const zlib = {};
  for (const op of ['gzip', 'gunzip', 'deflate', 'inflate', 'deflateRaw', 'inflateRaw', 'unzip']) {
    zlib[op + 'Sync'] = (data) => Buffer._wrap(b64Decode(host.zlib(op, b64Encode(toBytes(data))), false));
    zlib[op] = (data, opts, cb) => {
      if (typeof opts === 'function') cb = opts;
      let out;
      try { out = zlib[op + 'Sync'](data); } catch (e) { Promise.resolve().then(() => cb(e)); return; }
      Promise.resolve().then(() => cb(null, out));
    };
  }
  // Node's `util`, the parts functions use.
  function formatArgs(fmt, ...args) {
    if (typeof fmt !== 'string') return [fmt, ...args].map(show).join(' ');
    let i = 0;
    let out = fmt.replace(/%[sdifjoOc%]/g, (m) => {
      if (m === '%%') return '%';
      if (i >= args.length) return m;
      const a = args[i++];
      switch (m) {
        // CSS for browsers' consoles: Node prints nothing for it.
        case '%c': return '';
        case '%s': return show(a);
        case '%d': case '%i': return String(m === '%i' ? parseInt(a, 10) : Number(a));
        case '%f': return String(parseFloat(a));
        case '%j': return JSON.stringify(a);
        case '%o': return inspect(a, 0, [], new Set(), 4, true);
        default: return inspect(a, 0);
      }
    });
    for (; i < args.length; i++) out += ' ' + show(args[i]);
    return out;
  }
  const util = {
    format: formatArgs,
    // `inspect(v, {depth})`, or the old `inspect(v, showHidden, depth)`.
    inspect(v, opts, legacyDepth) {
      const d = opts && typeof opts === 'object' ? opts.depth : legacyDepth;
      return inspect(v, 0, [], new Set(), d === undefined ? 2 : d === null ? Infinity : Number(d));
    },
    promisify: (fn) => (...args) => new Promise((resolve, reject) => fn(...args, (err, value) => (err ? reject(err) : resolve(value)))),
    deprecate: (fn) => fn,
    inherits(ctor, superCtor) { Object.setPrototypeOf(ctor.prototype, superCtor.prototype); Object.setPrototypeOf(ctor, superCtor); },
    isDeepStrictEqual: (a, b) => G._.isEqual(a, b),
    types: {
      isDate: (v) => v instanceof Date,
      isRegExp: (v) => v instanceof RegExp,
      isPromise: (v) => v instanceof Promise,
      isUint8Array: (v) => v instanceof Uint8Array,
    },
    TextEncoder,
    TextDecoder,
  };
  const nodeFetch = Object.assign((...a) => fetch(...a), { default: fetch, Headers, Request, Response, FetchError });
  function req(name) {
    switch (name) {
      case 'lodash': return G._;
      case 'xml': return loadXml();
      case 'atob': return G.atob;
      case 'btoa': return G.btoa;
      case 'node-fetch': return nodeFetch;
      case 'form-data': return FormData;
      case 'crypto': return crypto;
      case 'buffer': return { Buffer };
      case 'url': return urlModule;
      case 'zlib': return zlib;
      case 'util': return util;
      case 'querystring': return querystring;
      default: {
        const e = new Error("Cannot find module '" + name + "': switchyard pre-installs lodash, xml, atob, btoa, node-fetch, form-data, crypto, buffer, url, querystring, zlib and util");
        e.code = 'MODULE_NOT_FOUND';
        throw e;
      }
    }
  }
  define('require', req);
  const moduleObj = { exports: {} };
  define('module', moduleObj);
  define('exports', moduleObj.exports);
  define('global', G);
  define('process', processShim);

  // ---------------------------------------------------------------- Segment
  let emitted = null;
  const identity = (m) => Boolean(m.userId || m.anonymousId);
  // The fields Segment's runtime copies into each call's message, in its
  // order; anything else is dropped, and so is a field with a falsy value.
  const COMMON = ['userId', 'anonymousId', 'context', 'integrations', 'messageId', 'sentAt', 'timestamp'];
  const FIELDS = {
    track: ['event', 'properties'],
    identify: ['traits'],
    page: ['name', 'properties'],
    screen: ['name', 'properties'],
    group: ['groupId', 'traits'],
    alias: ['previousId'],
  };
  function emit(type, required) {
    return function (message) {
      if (emitted === null) throw new Error('Segment.' + type + '() can only be called while the function runs');
      if (typeof message !== 'object' || message === null || Array.isArray(message)) {
        throw new ValidationError('Segment.' + type + '() expects an object');
      }
      if (!identity(message)) throw new ValidationError('Segment.' + type + '(): userId or anonymousId is required');
      for (const field of required) {
        if (message[field] === undefined || message[field] === null || message[field] === '') {
          throw new ValidationError('Segment.' + type + '(): ' + field + ' is required');
        }
      }
      const kept = { type };
      for (const field of FIELDS[type].concat(COMMON)) if (message[field]) kept[field] = message[field];
      emitted.messages.push(JSON.parse(JSON.stringify(kept)));
    };
  }
  const Segment = {
    track: emit('track', ['event']),
    identify: emit('identify', []),
    page: emit('page', []),
    screen: emit('screen', []),
    group: emit('group', ['groupId']),
    alias: emit('alias', ['previousId']),
    set(object) {
      if (emitted === null) throw new Error('Segment.set() can only be called while the function runs');
      if (!object || typeof object.collection !== 'string' || !object.collection) throw new ValidationError('Segment.set(): collection is required');
      if (object.id === undefined || object.id === null || object.id === '') throw new ValidationError('Segment.set(): id is required');
      emitted.objects.push({ collection: object.collection, id: String(object.id), properties: JSON.parse(JSON.stringify(object.properties || {})) });
    },
  };
  define('Segment', Segment);

  // ---------------------------------------------------------------- invocation
  // The reported message of the commonest engine error in V8's words (the
  // function itself still sees QuickJS's).
  const v8Message = (msg) => msg
    .replace(/^cannot read property '([^']*)' of (undefined|null)$/, "Cannot read properties of $2 (reading '$1')")
    .replace(/^cannot set property '([^']*)' of (undefined|null)$/, "Cannot set properties of $2 (setting '$1')");
  function describe(err, file) {
    if (!(err instanceof Error)) {
      return { name: 'Error', message: show(err), line: null, stack: '' };
    }
    // V8 leaves the frames of the error's own constructors out of its stack
    // (the line is where it was thrown, not the class); QuickJS keeps them.
    const ctors = new Set();
    for (let c = err.constructor; typeof c === 'function' && c !== Error && c !== Function.prototype; c = Object.getPrototypeOf(c)) {
      if (c.name) ctors.add(c.name);
    }
    const frames = functionFrames(err).split('\n');
    let first = frames.findIndex((l) => /^\s*at /.test(l));
    while (first >= 0 && first < frames.length) {
      const m = /^\s*at (?:new )?([\w$]+)[\s(]/.exec(frames[first]);
      if (!m || !ctors.has(m[1])) break;
      frames.splice(first, 1);
    }
    const stack = frames.join('\n');
    let line = null;
    const re = new RegExp(file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + ':(\\d+)');
    const m = re.exec(stack);
    if (m) line = Number(m[1]);
    return { name: err.name || 'Error', message: v8Message(String(err.message)), line, stack };
  }
  // An answer's headers as `entries()` names them (lower case, sorted), but
  // a line for each value: joined, two Set-Cookie values would read as one
  // cookie with a bad attribute.
  function answerLines(headers) {
    const out = [];
    for (const key of [...headers._map.keys()].sort()) for (const v of headers._map.get(key).values) out.push([key, v]);
    return out;
  }
  function normalizeAnswer(result) {
    if (result instanceof Response) {
      return { status: result.status, headers: answerLines(result.headers), body: b64Encode(result._bytes) };
    }
    if (result && typeof result === 'object' && typeof result.status === 'number') {
      const headers = new Headers(result.headers);
      let body = result.body;
      if (body !== undefined && body !== null && typeof body !== 'string' && !(body instanceof Uint8Array)) {
        body = JSON.stringify(body);
        if (!headers.has('content-type')) headers.set('content-type', 'application/json');
      }
      return { status: result.status, headers: answerLines(headers), body: b64Encode(bodyBytes(body) || new Uint8Array(0)) };
    }
    return null;
  }
  function settle(promise, file, extra) {
    const out = { messages: emitted.messages, objects: emitted.objects };
    return Promise.resolve(promise).then(
      (result) => { emitted = null; return JSON.stringify(Object.assign({ ok: true }, out, extra(result, out))); },
      (err) => { emitted = null; return JSON.stringify({ ok: false, error: describe(err, file), messages: [], objects: [] }); }
    );
  }
  // The body comes from the host when first read, at its own size: a
  // request near the 2 MB limit fits the default memory cap.
  function sourceRequest(raw) {
    let bytes, text;
    const body = () => (bytes === undefined ? (bytes = host.requestBytes()) : bytes);
    const headers = receivedHeaders(raw.headers);
    const url = new URL(raw.url);
    return {
      method: raw.method,
      url,
      headers,
      text() { if (text === undefined) text = host.requestText(); return text; },
      json() { return JSON.parse(this.text()); },
      arrayBuffer() { return body().slice().buffer; },
      buffer() { return Buffer.from(body()); },
    };
  }
  // Runs a source function. `rawJson`: {method, url, headers}; the body is the host's.
  define('__invokeSource', (rawJson, settingsJson, file) => {
    emitted = { messages: [], objects: [] };
    fetchesInFlight.clear();
    try {
      const raw = JSON.parse(rawJson);
      const settings = JSON.parse(settingsJson);
      const exp = G.module && G.module.exports;
      let p;
      if (typeof G.onRequest === 'function') {
        p = G.onRequest(sourceRequest(raw), settings);
        return settle(p, file, (result) => ({ response: normalizeAnswer(result) }));
      }
      const legacy = (exp && exp.processEvents) || (G.exports && G.exports.processEvents);
      if (typeof legacy === 'function') {
        const request = sourceRequest(raw);
        let body;
        try { body = request.json(); } catch (_) { body = request.text(); }
        const event = {
          payload: {
            body,
            headers: Object.fromEntries(request.headers.entries()),
            queryParameters: Object.fromEntries(request.url.searchParams.entries()),
          },
        };
        p = legacy(event);
        return settle(p, file, (result, out) => {
          const r = result || {};
          const events = (r.events || []).map((m) => JSON.parse(JSON.stringify(m)));
          const objects = (r.objects || []).map((o) => ({ collection: o.collection, id: String(o.id), properties: o.properties || {} }));
          return { messages: out.messages.concat(events), objects: out.objects.concat(objects) };
        });
      }
      throw new ReferenceError('the function defines neither onRequest(request, settings) nor exports.processEvents');
    } catch (err) {
      emitted = null;
      return Promise.resolve(JSON.stringify({ ok: false, error: describe(err, file), messages: [], objects: [] }));
    }
  });

  const HANDLERS = { track: 'onTrack', identify: 'onIdentify', page: 'onPage', screen: 'onScreen', group: 'onGroup', alias: 'onAlias', delete: 'onDelete' };
  // Runs a destination function handler for one event (or `onBatch` for an array).
  define('__invokeDestination', (eventJson, settingsJson, file) => {
    emitted = { messages: [], objects: [] };
    fetchesInFlight.clear();
    try {
      const event = JSON.parse(eventJson);
      const settings = JSON.parse(settingsJson);
      let batch = Array.isArray(event);
      let name = batch ? 'onBatch' : HANDLERS[event.type];
      let handler = name && G[name];
      // A function that handles only batches gets a single event as a batch
      // of one, rather than losing it as unsupported.
      if (typeof handler !== 'function' && !batch && typeof G.onBatch === 'function') {
        batch = true;
        name = 'onBatch';
        handler = G.onBatch;
      }
      if (typeof handler !== 'function') {
        emitted = null;
        return Promise.resolve(JSON.stringify({ ok: false, unsupported: true, error: { name: 'EventNotSupported', message: (name || event.type) + ' is not supported by this function', line: null, stack: '' } }));
      }
      const input = batch && !Array.isArray(event) ? [event] : event;
      return settle(handler(input, settings), file, (result) => {
        let out;
        try { out = result === undefined ? null : JSON.parse(JSON.stringify(result)); } catch (_) { out = null; }
        return { result: out, batch };
      });
    } catch (err) {
      emitted = null;
      return Promise.resolve(JSON.stringify({ ok: false, error: describe(err, file), messages: [], objects: [] }));
    }
  });
  define('__handlers', () => {
    const found = Object.values(HANDLERS).concat(['onBatch', 'onRequest']).filter((h) => typeof G[h] === 'function');
    const exp = G.module && G.module.exports;
    if ((exp && typeof exp.processEvents === 'function') || (G.exports && typeof G.exports.processEvents === 'function')) found.push('processEvents');
    return JSON.stringify(found);
  });
})(globalThis.__host);
