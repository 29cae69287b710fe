// WebCrypto primitives for zmesh's Python WebCryptoProvider (node-core/zmesh/browser/webcrypto.py).
// Every function takes and returns Uint8Array, so one call crosses the Pyodide bridge per operation;
// AES-CTR, the per-cell work, is a CtrStream object that makes its keystream ahead (see below).
// Private keys are raw bytes, as in the native provider.
const subtle = crypto.subtle;
const PKCS8_X25519 = [0x30, 0x2e, 2, 1, 0, 0x30, 5, 6, 3, 0x2b, 0x65, 0x6e, 4, 0x22, 4, 0x20];
const PKCS8_ED25519 = [0x30, 0x2e, 2, 1, 0, 0x30, 5, 6, 3, 0x2b, 0x65, 0x70, 4, 0x22, 4, 0x20];
const MLKEM = { name: "ML-KEM-768" };
const MLDSA = { name: "ML-DSA-65" }; // FIPS 204 pure mode; no context member means the empty context

const bytes = (buffer) => new Uint8Array(buffer);
const unb64url = (text) => Uint8Array.from(atob(text.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
const pkcs8 = (prefix, raw) => { const out = new Uint8Array(prefix.length + 32); out.set(prefix); out.set(raw, prefix.length); return out; };
const importPrivate = (prefix, name, raw, usages) => subtle.importKey("pkcs8", pkcs8(prefix, raw), { name }, true, usages);

export async function x25519Public(priv) {
  const key = await importPrivate(PKCS8_X25519, "X25519", priv, ["deriveBits"]);
  return unb64url((await subtle.exportKey("jwk", key)).x);
}

export async function x25519(priv, peer) {
  const key = await importPrivate(PKCS8_X25519, "X25519", priv, ["deriveBits"]);
  const pub = await subtle.importKey("raw", peer, { name: "X25519" }, true, []);
  return bytes(await subtle.deriveBits({ name: "X25519", public: pub }, key, 256));
}

export async function ed25519Public(priv) {
  const key = await importPrivate(PKCS8_ED25519, "Ed25519", priv, ["sign"]);
  return unb64url((await subtle.exportKey("jwk", key)).x);
}

export async function ed25519Sign(priv, message) {
  const key = await importPrivate(PKCS8_ED25519, "Ed25519", priv, ["sign"]);
  return bytes(await subtle.sign({ name: "Ed25519" }, key, message));
}

export async function ed25519Verify(pub, signature, message) {
  try {
    const key = await subtle.importKey("raw", pub, { name: "Ed25519" }, true, ["verify"]);
    return await subtle.verify({ name: "Ed25519" }, key, signature, message);
  } catch (err) {
    return false;
  }
}

export async function mlkemSupported() {
  try {
    await subtle.importKey("raw-seed", new Uint8Array(64), MLKEM, false, ["decapsulateBits"]);
    return true;
  } catch (err) {
    return false;
  }
}

export async function mlkemPublic(seed) {
  const key = await subtle.importKey("raw-seed", seed, MLKEM, true, ["decapsulateBits"]);
  const pub = await subtle.getPublicKey(key, ["encapsulateBits"]);
  return bytes(await subtle.exportKey("raw-public", pub));
}

export async function mlkemEncapsulate(pub) {
  const key = await subtle.importKey("raw-public", pub, MLKEM, true, ["encapsulateBits"]);
  const { ciphertext, sharedKey } = await subtle.encapsulateBits(MLKEM, key);
  return [bytes(ciphertext), bytes(sharedKey)];
}

export async function mlkemDecapsulate(seed, ciphertext) {
  const key = await subtle.importKey("raw-seed", seed, MLKEM, true, ["decapsulateBits"]);
  return bytes(await subtle.decapsulateBits(MLKEM, key, ciphertext));
}

export async function mldsaSupported() {
  try {
    await subtle.importKey("raw-seed", new Uint8Array(32), MLDSA, false, ["sign"]);
    return true;
  } catch (err) {
    return false;
  }
}

export async function mldsaPublic(seed) {
  const key = await subtle.importKey("raw-seed", seed, MLDSA, true, ["sign"]);
  return bytes(await subtle.exportKey("raw-public", await subtle.getPublicKey(key, ["verify"])));
}

export async function mldsaSign(seed, message) {
  const key = await subtle.importKey("raw-seed", seed, MLDSA, false, ["sign"]);
  return bytes(await subtle.sign(MLDSA, key, message));
}

// A public key WebCrypto cannot decode is a failed verification, as for Ed25519.
export async function mldsaVerify(pub, signature, message) {
  let key;
  try {
    key = await subtle.importKey("raw-public", pub, MLDSA, false, ["verify"]);
  } catch (err) {
    return false;
  }
  return await subtle.verify(MLDSA, key, signature, message);
}

export async function hkdf(ikm, salt, info, length) {
  const key = await subtle.importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  return bytes(await subtle.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info }, key, length * 8));
}

export async function aesGcmEncrypt(raw, iv, data, additionalData) {
  const key = await subtle.importKey("raw", raw, "AES-GCM", false, ["encrypt"]);
  return bytes(await subtle.encrypt({ name: "AES-GCM", iv, additionalData }, key, data));
}

export async function aesGcmDecrypt(raw, iv, data, additionalData) {
  const key = await subtle.importKey("raw", raw, "AES-GCM", false, ["decrypt"]);
  try {
    return bytes(await subtle.decrypt({ name: "AES-GCM", iv, additionalData }, key, data));
  } catch (err) {
    return null;
  }
}

// A stateful AES-256-CTR stream whose keystream is made ahead, in few big WebCrypto calls: applying
// it to a batch of cells is then a synchronous XOR here (applyNow), with no promise for Python to
// await. Only when too little keystream is ready does a batch wait (apply). How far ahead it makes
// keystream grows with use, from 16 KiB to MAX_AHEAD, so an idle circuit's streams stay small:
// a stream holds at most 2 * MAX_AHEAD bytes of keystream (the ready part and one refill in flight).
const MIN_AHEAD = 16 * 1024;
const MAX_AHEAD = 256 * 1024;
const ZEROS = new Uint8Array(MAX_AHEAD);  // what a refill encrypts (WebCrypto copies its input)

function addCounter(iv, blocks) {  // the 128-bit big-endian counter block iv + blocks (mod 2^128)
  const counter = new Uint8Array(iv);
  let carry = BigInt(blocks);
  for (let i = 15; i >= 0 && carry > 0n; i--) {
    const sum = BigInt(counter[i]) + (carry & 0xffn);
    counter[i] = Number(sum & 0xffn);
    carry = (carry >> 8n) + (sum >> 8n);
  }
  return counter;
}

export class CtrStream {
  constructor(raw, iv) {
    this.key = subtle.importKey("raw", raw, "AES-CTR", false, ["encrypt"]);
    this.iv = new Uint8Array(iv);
    this.made = 0;  // keystream bytes requested so far (a multiple of 16)
    this.chunks = [];  // ready keystream, oldest first; `used` bytes of chunks[0] are spent
    this.used = 0;
    this.ready = 0;
    this.refill = null;  // the one refill in flight, if any
    this.ahead = MIN_AHEAD;
    this.waiting = Promise.resolve();  // async applies, in order
    this.queued = 0;
  }

  _refill(size) {
    const length = Math.ceil(size / 16) * 16;
    const counter = addCounter(this.iv, this.made / 16);
    this.made += length;
    this.refill = this.key
      .then((key) => subtle.encrypt({ name: "AES-CTR", counter, length: 128 }, key,
        length <= ZEROS.length ? ZEROS.subarray(0, length) : new Uint8Array(length)))
      .then((buffer) => { this.chunks.push(new Uint8Array(buffer)); this.ready += length; })
      .finally(() => { this.refill = null; });
    this.ahead = Math.min(this.ahead * 2, MAX_AHEAD);
  }

  _xor(data) {  // data has at most `ready` bytes; XORs it in place
    let at = 0;
    while (at < data.length) {
      const chunk = this.chunks[0];
      const n = Math.min(chunk.length - this.used, data.length - at);
      if ((data.byteOffset + at) % 4 === 0 && (chunk.byteOffset + this.used) % 4 === 0 && n >= 4) {
        const words = n >> 2;
        const d = new Int32Array(data.buffer, data.byteOffset + at, words);
        const k = new Int32Array(chunk.buffer, chunk.byteOffset + this.used, words);
        for (let i = 0; i < words; i++) d[i] ^= k[i];
        for (let i = words * 4; i < n; i++) data[at + i] ^= chunk[this.used + i];
      } else {
        for (let i = 0; i < n; i++) data[at + i] ^= chunk[this.used + i];
      }
      at += n;
      this.used += n;
      if (this.used === chunk.length) { this.chunks.shift(); this.used = 0; }
    }
    this.ready -= data.length;
    if (this.refill === null && this.ready < this.ahead) this._refill(this.ahead);
    return data;
  }

  /** `data` (a Uint8Array, changed in place) with the keystream applied, or undefined if not enough
   * keystream is ready yet (or an earlier apply still waits): then call apply. */
  applyNow(data) {
    return this.queued === 0 && this.ready >= data.length ? this._xor(data) : undefined;
  }

  /** The same, waiting for keystream. */
  apply(data) {
    this.queued++;
    const run = this.waiting.then(async () => {
      while (this.ready < data.length) {
        if (this.refill === null) this._refill(Math.max(data.length - this.ready, this.ahead));
        await this.refill;
      }
      return this._xor(data);
    }).finally(() => { this.queued--; });
    this.waiting = run.catch(() => {});
    return run;
  }
}
