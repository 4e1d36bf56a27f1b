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

  define('atob', function atob(data) {
    return latin1Decode(b64Decode(String(data), true));
  });
  define('btoa', function btoa(data) {
    data = String(data);
    for (let i = 0; i < data.length; i++) {
      if (data.charCodeAt(i) > 255) throw new DOMExceptionLike('Invalid character', 'InvalidCharacterError');
    }
    return b64Encode(latin1Encode(data));
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
    static alloc(size, fill) {
      const b = new Buffer(size);
      if (fill !== undefined) b.fill(typeof fill === 'string' ? fill.charCodeAt(0) : fill);
      return b;
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
  function digestObject(kind, alg, key) {
    const parts = [];
    let done = false;
    const obj = {
      update(data, enc) {
        if (done) throw new Error('Digest already called');
        parts.push(toBytes(data, enc));
        return obj;
      },
      digest(enc) {
        done = true;
        const all = Buffer.concat(parts.map((p) => Buffer._wrap(p)));
        const out = kind === 'hmac'
          ? host.hmac(String(alg), b64Encode(key), b64Encode(all))
          : host.hash(String(alg), b64Encode(all));
        const bytes = Buffer._wrap(b64Decode(out, false));
        return enc ? bytes.toString(enc) : bytes;
      },
    };
    return obj;
  }
  const crypto = {
    createHmac: (alg, key) => {
      host.hmac(String(alg), '', '');
      return digestObject('hmac', alg, toBytes(key && key.export ? key.export() : key));
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
  class Headers {
    constructor(init) {
      this._map = new Map();
      if (!init) return;
      if (init instanceof Headers) init.forEach((v, k) => this.append(k, v));
      else if (Array.isArray(init)) for (const [k, v] of init) this.append(k, v);
      else for (const k of Object.keys(init)) {
        const v = init[k];
        if (Array.isArray(v)) v.forEach((x) => this.append(k, x));
        else if (v !== undefined) this.append(k, v);
      }
    }
    append(k, v) {
      k = String(k).toLowerCase();
      const cur = this._map.get(k);
      this._map.set(k, cur === undefined ? String(v) : cur + ', ' + String(v));
    }
    set(k, v) { this._map.set(String(k).toLowerCase(), String(v)); }
    get(k) { const v = this._map.get(String(k).toLowerCase()); return v === undefined ? null : v; }
    has(k) { return this._map.has(String(k).toLowerCase()); }
    delete(k) { this._map.delete(String(k).toLowerCase()); }
    forEach(fn, self) { for (const [k, v] of this.entries()) fn.call(self, v, k, this); }
    entries() { return [...this._map.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1))[Symbol.iterator](); }
    keys() { return [...this.entries()].map((e) => e[0])[Symbol.iterator](); }
    values() { return [...this.entries()].map((e) => e[1])[Symbol.iterator](); }
    [Symbol.iterator]() { return this.entries(); }
    raw() { const o = {}; for (const [k, v] of this._map) o[k] = [v]; return o; }
  }
  define('Headers', Headers);

  // ---------------------------------------------------------------- FormData
  class FormData {
    constructor() { this._list = []; }
    append(k, v, filename) { this._list.push([String(k), v, filename]); }
    set(k, v, filename) { this.delete(k); this.append(k, v, filename); }
    get(k) { const p = this._list.find((x) => x[0] === k); return p ? p[1] : null; }
    getAll(k) { return this._list.filter((x) => x[0] === k).map((x) => x[1]); }
    has(k) { return this._list.some((x) => x[0] === k); }
    delete(k) { this._list = this._list.filter((x) => x[0] !== k); }
    entries() { return this._list.map((x) => [x[0], x[1]])[Symbol.iterator](); }
    [Symbol.iterator]() { return this.entries(); }
    getBoundary() { if (!this._boundary) this._boundary = '----switchyard' + host.uuid().replace(/-/g, ''); return this._boundary; }
    getHeaders() { return { 'content-type': 'multipart/form-data; boundary=' + this.getBoundary() }; }
    _encode() {
      const b = this.getBoundary();
      const parts = [];
      for (const [k, v, filename] of this._list) {
        let head = '--' + b + '\r\nContent-Disposition: form-data; name="' + k + '"';
        if (filename) head += '; filename="' + filename + '"\r\nContent-Type: application/octet-stream';
        parts.push(Buffer.from(head + '\r\n\r\n'));
        parts.push(typeof v === 'string' || typeof v === 'number' ? Buffer.from(String(v)) : Buffer.from(toBytes(v)));
        parts.push(Buffer.from('\r\n'));
      }
      parts.push(Buffer.from('--' + b + '--\r\n'));
      return Buffer.concat(parts);
    }
  }
  define('FormData', FormData);

  // ---------------------------------------------------------------- Response / Request / fetch
  function bodyBytes(body, headers) {
    if (body === undefined || body === null) return null;
    if (typeof body === 'string') return utf8Encode(body);
    if (body instanceof URLSearchParams) {
      if (headers && !headers.has('content-type')) headers.set('content-type', 'application/x-www-form-urlencoded;charset=UTF-8');
      return utf8Encode(body.toString());
    }
    if (body instanceof FormData) {
      if (headers && !headers.has('content-type')) headers.set('content-type', 'multipart/form-data; boundary=' + body.getBoundary());
      return body._encode();
    }
    if (body instanceof ArrayBuffer || ArrayBuffer.isView(body)) return toBytes(body);
    return utf8Encode(String(body));
  }
  class Response {
    constructor(body, init) {
      init = init || {};
      this.status = init.status === undefined ? 200 : init.status;
      this.statusText = init.statusText || '';
      this.headers = new Headers(init.headers);
      this.url = init.url || '';
      // Text bodies stay text: encoding them byte by byte in JavaScript is
      // the expensive part, and most bodies are only ever read as text.
      this._text = typeof body === 'string' ? body : null;
      this._cache = this._text === null ? bodyBytes(body, this.headers) || new Uint8Array(0) : null;
      this.bodyUsed = false;
    }
    get _bytes() {
      if (this._cache === null) this._cache = utf8Encode(this._text);
      return this._cache;
    }
    get ok() { return this.status >= 200 && this.status < 300; }
    get redirected() { return false; }
    get type() { return 'default'; }
    // A body is read once, as node-fetch enforces (`clone()` first to read twice).
    _use() {
      if (this.bodyUsed) throw new TypeError('body used already for: ' + this.url);
      this.bodyUsed = true;
    }
    async text() { this._use(); return this._text !== null ? this._text : utf8Decode(this._bytes); }
    async json() { return JSON.parse(await this.text()); }
    async arrayBuffer() { this._use(); return this._bytes.slice().buffer; }
    async buffer() { this._use(); return Buffer.from(this._bytes); }
    clone() { const r = new Response(this._text !== null ? this._text : this._bytes, this); r.headers = new Headers(this.headers); return r; }
    static json(data, init) {
      const r = new Response(JSON.stringify(data), init);
      if (!r.headers.has('content-type')) r.headers.set('content-type', 'application/json');
      return r;
    }
  }
  class Request {
    constructor(input, init) {
      init = init || {};
      this.url = input instanceof Request ? input.url : String(input);
      this.method = (init.method || (input instanceof Request ? input.method : 'GET')).toUpperCase();
      this.headers = new Headers(init.headers || (input instanceof Request ? input.headers : undefined));
      const body = init.body !== undefined ? init.body
        : input instanceof Request ? (input._text !== null ? input._text : input._bytes) : undefined;
      this._text = typeof body === 'string' ? body : null;
      this._bytes = this._text === null ? bodyBytes(body, this.headers) : null;
      // As node-fetch does: a string body without a type is plain text.
      if (this._text !== null && !this.headers.has('content-type')) this.headers.set('content-type', 'text/plain;charset=UTF-8');
    }
    async text() { return this._text !== null ? this._text : this._bytes ? utf8Decode(this._bytes) : ''; }
    async json() { return JSON.parse(await this.text()); }
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
    const req = new Request(input, init);
    const id = host.fetch(
      req.method,
      req.url,
      JSON.stringify([...req.headers.entries()]),
      req._text === null && req._bytes ? b64Encode(req._bytes) : '',
      req._text !== null ? req._text : '',
      req._text !== null
    );
    const signal = init && init.signal;
    if (signal && signal.aborted) { fetchesInFlight.delete(id); throw abortError(signal); }
    const answer = await new Promise((resolve, reject) => {
      fetchesInFlight.set(id, resolve);
      if (signal) signal.addEventListener('abort', () => { fetchesInFlight.delete(id); reject(abortError(signal)); });
    });
    if (answer.error) {
      const e = new TypeError('fetch failed: ' + answer.error);
      e.code = answer.code;
      throw e;
    }
    return new Response(typeof answer.text === 'string' ? answer.text : b64Decode(answer.body, false), {
      status: answer.status,
      statusText: answer.statusText,
      headers: answer.headers,
      url: req.url,
    });
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
    timers.push({ id, due: Date.now() + delay, fn, args, repeat: repeat ? Math.max(1, delay) : 0 });
    return id;
  }
  define('setTimeout', (fn, ms, ...args) => addTimer(fn, ms, args, false));
  define('setInterval', (fn, ms, ...args) => addTimer(fn, ms, args, true));
  define('setImmediate', (fn, ...args) => addTimer(fn, 0, args, false));
  const clear = (id) => { timers = timers.filter((t) => t.id !== id); };
  define('clearTimeout', clear);
  define('clearInterval', clear);
  define('clearImmediate', clear);
  // Returns the delay (ms) before the next timer, or -1 when none.
  define('__nextTimerDelay', () => {
    if (!timers.length) return -1;
    const next = timers.reduce((a, b) => (b.due < a.due ? b : a));
    return Math.max(0, next.due - Date.now());
  });
  define('__runNextTimer', () => {
    if (!timers.length) return;
    const next = timers.reduce((a, b) => (b.due < a.due ? b : a));
    if (next.repeat) next.due = Math.max(next.due, Date.now()) + next.repeat;
    else clear(next.id);
    if (typeof next.fn === 'function') next.fn(...next.args);
  });

  // ---------------------------------------------------------------- console
  function show(v, depth) {
    if (typeof v === 'string') return depth ? JSON.stringify(v) : v;
    if (v instanceof Error) return (v.name || 'Error') + ': ' + v.message;
    if (typeof v === 'function') return '[Function ' + (v.name || 'anonymous') + ']';
    if (typeof v === 'undefined') return 'undefined';
    if (typeof v === 'bigint') return v.toString() + 'n';
    try {
      const seen = new WeakSet();
      return JSON.stringify(v, (k, x) => {
        if (typeof x === 'object' && x !== null) { if (seen.has(x)) return '[Circular]'; seen.add(x); }
        if (typeof x === 'bigint') return x.toString();
        return x;
      });
    } catch (_) { return String(v); }
  }
  const logAt = (level) => (...args) => host.log(level, args.map((a) => show(a, 0)).join(' '));
  define('console', {
    log: logAt('info'), info: logAt('info'), debug: logAt('debug'),
    warn: logAt('warn'), error: logAt('error'), trace: logAt('debug'),
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
  const nodeFetch = Object.assign((...a) => fetch(...a), { default: fetch, Headers, Request, Response });
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
      case 'querystring': return querystring;
      default: {
        const e = new Error("Cannot find module '" + name + "': switchyard pre-installs lodash, xml, atob, btoa, node-fetch, form-data, crypto, buffer, url and querystring");
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
  const identity = (m) => m.userId !== undefined && m.userId !== null && m.userId !== '' ||
    m.anonymousId !== undefined && m.anonymousId !== null && m.anonymousId !== '';
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
      const m = JSON.parse(JSON.stringify(message));
      m.type = type;
      emitted.messages.push(m);
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
  function describe(err, file) {
    if (!(err instanceof Error)) {
      return { name: 'Error', message: typeof err === 'string' ? err : show(err, 0), line: null, stack: '' };
    }
    const stack = String(err.stack || '');
    let line = null;
    const re = new RegExp(file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + ':(\\d+)');
    const m = re.exec(stack);
    if (m) line = Number(m[1]);
    return { name: err.name || 'Error', message: String(err.message), line, stack };
  }
  function normalizeAnswer(result) {
    if (result instanceof Response) {
      return { status: result.status, headers: [...result.headers.entries()], body: b64Encode(result._bytes) };
    }
    if (result && typeof result === 'object' && typeof result.status === 'number') {
      const headers = new Headers(result.headers);
      let body = result.body;
      if (body !== undefined && body !== null && typeof body !== 'string' && !(body instanceof Uint8Array)) {
        body = JSON.stringify(body);
        if (!headers.has('content-type')) headers.set('content-type', 'application/json');
      }
      return { status: result.status, headers: [...headers.entries()], body: b64Encode(bodyBytes(body) || new Uint8Array(0)) };
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
  function sourceRequest(raw) {
    const bytes = b64Decode(raw.body, false);
    let text;
    const headers = new Headers(raw.headers);
    const url = new URL(raw.url);
    return {
      method: raw.method,
      url,
      headers,
      text() { if (text === undefined) text = utf8Decode(bytes); return text; },
      json() { return JSON.parse(this.text()); },
      arrayBuffer() { return bytes.slice().buffer; },
      buffer() { return Buffer.from(bytes); },
    };
  }
  // Runs a source function. `rawJson`: {method, url, headers, body (base64)}.
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
      const batch = Array.isArray(event);
      const name = batch ? 'onBatch' : HANDLERS[event.type];
      const handler = name && G[name];
      if (typeof handler !== 'function') {
        emitted = null;
        return Promise.resolve(JSON.stringify({ ok: false, unsupported: true, error: { name: 'EventNotSupported', message: (name || event.type) + ' is not supported by this function', line: null, stack: '' } }));
      }
      return settle(handler(event, settings), file, (result) => {
        let out;
        try { out = result === undefined ? null : JSON.parse(JSON.stringify(result)); } catch (_) { out = null; }
        return { result: out };
      });
    } catch (err) {
      emitted = null;
      return Promise.resolve(JSON.stringify({ ok: false, error: describe(err, file), messages: [], objects: [] }));
    }
  });
  define('__handlers', () => JSON.stringify(Object.values(HANDLERS).concat(['onBatch']).filter((h) => typeof G[h] === 'function')));
})(globalThis.__host);
