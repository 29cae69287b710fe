// WebCrypto primitives for zmesh's Python WebCryptoProvider (node-core/zmesh/browser/webcrypto.py).
// Every function takes and returns Uint8Array, so one call crosses the Pyodide bridge per operation
// (or per batch of cells, for AES-CTR). Private keys are raw bytes, as in the native provider.
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

// AES-CTR applied to `data` at byte `offset` of the keystream started at counter block `iv`:
// one call per batch of cells; the Python side keeps the offset.
export async function aesCtrApply(raw, iv, offset, data) {
  const key = await subtle.importKey("raw", raw, "AES-CTR", false, ["encrypt"]);
  const counter = new Uint8Array(iv);
  let carry = BigInt(Math.floor(offset / 16));
  for (let i = 15; i >= 0 && carry > 0n; i--) {
    const sum = BigInt(counter[i]) + (carry & 0xffn);
    counter[i] = Number(sum & 0xffn);
    carry = (carry >> 8n) + (sum >> 8n);
  }
  const skip = offset % 16;
  const input = new Uint8Array(skip + data.length);
  input.set(data, skip);
  const out = bytes(await subtle.encrypt({ name: "AES-CTR", counter, length: 128 }, key, input));
  return out.subarray(skip);
}
