// MeshVPN: the zmesh JavaScript API. The tab runs the same Python core as native relays (Pyodide);
// this module is a thin, typed front over it. See meshvpn.d.ts.
//
//   import { MeshVPN } from "/meshvpn.js";
//   const vpn = new MeshVPN({ hops: 3 });
//   await vpn.connect();
//   const { status, body } = await vpn.fetch("http://example.org/");
import { bootZmesh } from "/boot.mjs";

// "cloudflare" (the design's name) is an alias of "proxy": any upstream-proxy exit, no vendor's.
const EXITS = ["direct", "proxy", "cloudflare"];
const TRANSPORTS = ["auto", "webrtc", "websocket"];
let runtime = null;
let toBytes = null;  // Uint8Array -> Python bytes, set once the runtime is up
let settle = null;  // zmesh.browser.tab.settle, set once the runtime is up

/** A zmesh error: `type` is its Python class ("StreamError", "CircuitError", ...), `code` the name
 * of its reason ("CONNECT_REFUSED", "DESTROYED", "TIMEOUT", ...) or null when it has none. */
export class MeshError extends Error {
  constructor(what, info) {
    super(`${what}: ${info.type}: ${info.message}`);
    this.name = "MeshError";
    this.type = info.type;
    this.code = info.code ?? null;
  }
}

// Any other Python exception (a bug, an OSError) reaches JS as a PythonError whose message is the
// whole traceback; its last line is what a caller can use.
function lastLine(err) {
  return String(err && err.message).split("\n").filter(Boolean).pop();
}

// Call a Python coroutine method through tab.settle, which hands a ZmeshError back as data: it is
// thrown here as a MeshError carrying the reason's name, never parsed out of a message.
async function call(what, method, ...args) {
  let outcome;
  try {
    outcome = await settle(method, ...args);
  } catch (err) {
    throw new Error(`${what}: ${lastLine(err)}`);
  }
  const value = outcome.get(0);
  const failure = outcome.get(1);
  outcome.destroy();
  if (failure === undefined) return value;
  const info = failure.toJs({ dict_converter: Object.fromEntries });
  failure.destroy();
  throw new MeshError(what, info);
}

// A Python MeshStream (a proxy this object keeps) as a duplex stream: read() resolves null at a
// normal end and rejects at an abnormal one.
function duplex(stream) {
  return {
    async read() {
      const data = await call("stream read failed", stream.read);
      const bytes = data.toJs ? data.toJs() : data;
      if (data.destroy) data.destroy();
      return bytes.length ? new Uint8Array(bytes) : null;
    },
    write: (bytes) => call("stream write failed", stream.write, pyBytes(bytes)),
    close: () => stream.close(),
  };
}

function pyBytes(data) {
  if (!(data instanceof Uint8Array)) throw new TypeError("data must be a Uint8Array");
  return toBytes(data);
}

// The tab's identity key lives in IndexedDB so a reload keeps its PeerId, and its entry guards beside
// it so a reload keeps them too. Only the tab holding the Web Lock uses them; a second tab of this
// origin gets a fresh identity and in-memory guards (two nodes must never share a PeerId). They are as
// safe as this origin's storage: clear site data to forget them.
function idb(mode, action) {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open("zmesh", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("keys");
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const request = action(open.result.transaction("keys", mode).objectStore("keys"));
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    };
  });
}

async function claimSavedIdentity() {
  const held = await new Promise((resolve) => {
    navigator.locks.request("zmesh-identity", { ifAvailable: true }, (lock) => {
      resolve(lock !== null);
      return lock ? new Promise(() => {}) : undefined;  // keep the lock for the tab's lifetime
    });
  });
  if (!held) return null;
  return { saved: (await idb("readonly", (store) => store.get("identity"))) || null,
           guards: (await idb("readonly", (store) => store.get("guards"))) || null };
}

// An onion service's key (whose public half is its .mesh address) lives in IndexedDB beside the
// identity, made on first use, so a reload keeps the address. It is the 32-byte Ed25519 seed, the same
// bytes as the "seed" of a native `zmesh service`'s service.key, so exportServiceKey/importServiceKey
// move an address between tabs, origins and native services. Anyone holding it can run the service.
const SERVICE_KEY_SIZE = 32;

export async function loadServiceKey() {
  const saved = await idb("readonly", (store) => store.get("service"));
  if (saved) return new Uint8Array(saved);
  const seed = crypto.getRandomValues(new Uint8Array(SERVICE_KEY_SIZE));
  try {
    await idb("readwrite", (store) => store.add(seed, "service"));  // add, not put: never replace a key
  } catch (err) {
    if (err && err.name === "ConstraintError") return loadServiceKey();  // another tab made one first
    throw err;
  }
  return seed;
}

function validate(options) {
  const out = {};
  for (const [key, value] of Object.entries(options)) {
    switch (key) {
      case "hops":
        if (!Number.isInteger(value) || value < 2 || value > 8) throw new TypeError(`hops must be an integer 2..8, got ${value}`);
        out.hops = value; break;
      case "exit":
        if (!EXITS.includes(value)) throw new TypeError(`exit must be one of ${EXITS.join(", ")}, got ${value}`);
        out.exit = value; break;
      case "country":
        if (typeof value !== "string" || !/^[A-Za-z]{2}$/.test(value)) throw new TypeError(`country must be a two-letter code, got ${value}`);
        out.country = value.toUpperCase(); break;
      case "enableFEC":
        if (typeof value !== "boolean") throw new TypeError("enableFEC must be true or false");
        out.enable_fec = value; break;
      case "transport":
        if (!TRANSPORTS.includes(value)) throw new TypeError(`transport must be one of ${TRANSPORTS.join(", ")}, got ${value}`);
        out.transport = value; break;
      case "iceServers":
        if (!Array.isArray(value) || !value.every((s) => s && (typeof s.urls === "string" || Array.isArray(s.urls))))
          throw new TypeError("iceServers must be an array of {urls, username?, credential?}");
        out.ice_servers = value.map((s) => ({ ...s, urls: [].concat(s.urls) })); break;
      case "icePolicy":
        if (!["all", "relay"].includes(value)) throw new TypeError("icePolicy must be 'all' or 'relay'");
        out.ice_policy = value; break;
      case "webrtcTimeout":
        if (typeof value !== "number" || !(value > 0 && value <= 300)) throw new TypeError("webrtcTimeout must be seconds, 0 < t <= 300");
        out.webrtc_timeout = value; break;
      case "descriptorLifetime":
        if (!Number.isInteger(value) || value < 60 || value > 86400)
          throw new TypeError(`descriptorLifetime must be whole seconds 60..86400, got ${value}`);
        out.descriptor_lifetime = value; break;
      case "relay":
        if (typeof value !== "boolean") throw new TypeError("relay must be true or false");
        out.relay = value; break;
      case "identity":
        if (!["persistent", "ephemeral"].includes(value)) throw new TypeError("identity must be 'persistent' or 'ephemeral'");
        out.identity = value; break;
      case "excludeCountries":
        if (!Array.isArray(value) || !value.every((c) => typeof c === "string" && /^[A-Za-z]{2}$/.test(c)))
          throw new TypeError("excludeCountries must be an array of two-letter country codes");
        out.exclude_countries = value.map((c) => c.toUpperCase()); break;
      case "entry":
        if (typeof value !== "string") throw new TypeError("entry must be a PeerId string");
        out.entry = value; break;
      case "destination":
        if (typeof value !== "string") throw new TypeError("destination must be a PeerId or .mesh address string");
        out.destination = value; break;
      case "cover":
        if (typeof value !== "string" || !/^(off|(poisson|constant):[0-9]+(\.[0-9]+)?)$/.test(value))
          throw new TypeError(`cover must be 'off', 'poisson:RATE' or 'constant:RATE' (cells/s), got ${value}`);
        out.cover = value; break;
      case "extraCAs":
        if (!Array.isArray(value) || !value.every((pem) => typeof pem === "string" && pem.includes("-----BEGIN CERTIFICATE-----")))
          throw new TypeError("extraCAs must be an array of PEM certificates");
        out.extra_cas = [...value]; break;
      case "authorities":  // "URL#FINGERPRINT" of each directory authority (docs/directory.md §8)
        if (!Array.isArray(value) || value.length < 1 || value.length > 9
            || !value.every((a) => typeof a === "string" && /^https?:\/\/[^#\s]+#[a-z2-7]{56}$/.test(a)))
          throw new TypeError("authorities must be an array of 1..9 'URL#FINGERPRINT' strings (http:// or https://)");
        out.authorities = [...value]; break;
      default:
        throw new TypeError(`unknown option ${key}`);
    }
  }
  return out;
}

// Options read when the tab joins; updateConfig refuses to change them on a running tab.
const JOIN_ONLY = ["relay", "identity", "descriptor_lifetime", "authorities"];
let claimed = null;  // this tab's saved identity, claimed once (the Web Lock is held for the tab's life)

export class MeshVPN {
  constructor(options = {}) {
    this.options = validate(options);
    this.handlers = { message: [], connect: [], disconnect: [], error: [] };
    this.peerId = null;
    this._tab = null;  // the Python TabMesh: the node and its MeshVPN, one owner (zmesh.browser.session)
    this.address = null;  // the .mesh address, once host() resolved
    this._vpn = null;
    this._joining = null;  // the connect() under way, which a second connect() waits for
    this._phase = null;  // "connecting" | "disconnecting" while one runs
    this._errors = 0;  // errors emitted so far, so a rejected connect() does not emit its error twice
  }

  /** "disconnected" | "connecting" | "connected" | "reconnecting" | "relaying" | "disconnecting":
   * see meshvpn.d.ts for what each means and which call leads where. */
  get state() {
    if (this._phase) return this._phase;
    if (!this._tab || this._tab.closed) return "disconnected";
    const state = this._vpn.state;
    return state === "disconnected" && this._tab.relaying ? "relaying" : state;
  }

  on(event, callback) {
    if (!(event in this.handlers)) throw new TypeError(`unknown event ${event}`);
    this.handlers[event].push(callback);
  }

  _emit(event, value) {
    if (event === "error") this._errors += 1;
    for (const callback of this.handlers[event]) {
      try {
        callback(value);
      } catch (err) {
        console.error(`a MeshVPN ${event} handler threw`, err);  // never into the Python that emitted it
      }
    }
  }

  // What the Python side emits (zmesh.browser.session.TabMesh): payloads are plain JS objects.
  _fromPython(event, payload) {
    if (event === "error") this._emit("error", new MeshError("mesh error", payload));
    else this._emit(event, event === "connect" ? { ...payload, state: this.state } : payload);
  }

  async connect(options = {}) {
    if (this._joining) await this._joining.catch(() => {});
    if (this._tab && !this._tab.closed) {  // connected, reconnecting or relaying: one node, one PeerId
      if (Object.keys(options).length) await this.updateConfig(options);
      await call("could not connect", this._tab.connect);
      return;
    }
    Object.assign(this.options, validate(options));
    this._phase = "connecting";
    this._joining = this._join();
    try {
      await this._joining;
    } finally {
      this._joining = null;
      this._phase = null;
    }
  }

  async _join() {
    const errors = this._errors;
    try {
      runtime ??= bootZmesh();
      const { pyodide } = await runtime;
      const openMesh = pyodide.runPython("from zmesh.browser.tab import open_mesh; open_mesh");
      settle ??= pyodide.runPython("from zmesh.browser.tab import settle; settle");
      toBytes ??= pyodide.runPython("lambda array: array.to_bytes()");
      const claim = this.options.identity === "ephemeral" ? null : await (claimed ??= claimSavedIdentity());
      const { identity, ...rest } = this.options;
      const settings = { ...rest, events: (event, payload) => this._fromPython(event, payload) };
      const saved = claim && (this.peerId === null ? claim.saved : claim.current);
      if (saved) settings.saved_identity = saved;
      if (this._tab) settings.published_after = this._tab.node._published;  // joining again as this node
      if (rest.authorities) {  // the last good consensus, verified again before use (zmesh.browser.tab_consensus)
        const cached = await idb("readonly", (store) => store.get("consensus"));
        if (cached) settings.saved_consensus = cached;
        settings.save_consensus = (data) => idb("readwrite", (store) => store.put(data, "consensus"));
      }
      if (claim) {
        if (claim.guards) settings.saved_guards = claim.guards;
        settings.save_guards = (state) => idb("readwrite", (store) => store.put(state, "guards"));
      }
      this._tab = await call("could not join the mesh", openMesh, pyodide.toPy(settings));
      this._vpn = this._tab.vpn;
      this.peerId = this._vpn.peer_id.text;
      if (claim) {
        const secret = this._vpn.driver.node.identity.to_bytes();
        claim.current = secret.toJs();
        await idb("readwrite", (store) => store.put(claim.current, "identity"));
        secret.destroy();
      }
      this._vpn.on("message", (message) => {
        const bytes = message.toJs ? message.toJs() : message;
        this._emit("message", new Uint8Array(bytes));
        if (message.destroy) message.destroy();
      });
    } catch (err) {
      const error = err instanceof MeshError ? err : new Error(`could not join the mesh: ${lastLine(err)}`);
      if (this._errors === errors) this._emit("error", error);  // the Python side may have emitted it
      throw error;
    }
  }

  /** This origin's onion-service key (made on first use); works before connect(). */
  async exportServiceKey() {
    return loadServiceKey();
  }

  /** Make `seed` (from exportServiceKey or a native service.key) this origin's service key. An
   * existing different key is replaced only with `{ replace: true }`: its address would be lost. */
  async importServiceKey(seed, { replace = false } = {}) {
    if (!(seed instanceof Uint8Array) || seed.length !== SERVICE_KEY_SIZE)
      throw new TypeError(`a service key is a Uint8Array of ${SERVICE_KEY_SIZE} bytes`);
    const saved = await idb("readonly", (store) => store.get("service"));
    const same = saved && saved.length === seed.length && seed.every((byte, i) => byte === saved[i]);
    if (saved && !same && !replace)
      throw new Error("importServiceKey: this origin already has a different service key; pass { replace: true } "
                      + "to replace it (its .mesh address is then lost unless exported)");
    await idb("readwrite", (store) => store.put(new Uint8Array(seed), "service"));
  }

  _require() {
    if (!this._tab || this._tab.closed) throw new Error("not connected: call connect() first");
    return this._vpn;
  }

  /** Rejects with a MeshError if the stream ends abnormally (circuit destroyed, the exit's error),
   * never a short body. */
  async fetch(url) {
    const result = await call(`fetch ${url} failed`, this._require().fetch, url);
    const { headers, body } = result;  // proxies of the Python dict and bytes: copy, then free
    const response = { status: result.status, headers: headers.toJs({ dict_converter: Object.fromEntries }),
                       body: new Uint8Array(body.toJs()) };
    headers.destroy();
    body.destroy();
    result.destroy();
    return response;
  }

  /** A TCP-like stream to host:port, connected by the exit: read() resolves null at a normal end
   * and rejects at an abnormal one (the circuit destroyed, the far side's error). */
  async openStream(host, port) {
    const stream = await call(`stream to ${host}:${port} refused`, this._require().open_stream, host, port);
    return duplex(stream);
  }

  /** Host this origin's onion service (its key: exportServiceKey) from this tab; resolves its
   * `.mesh` address once the descriptor is published. Messages sent to the address arrive as
   * on("message"); a stream to `port` is handed to `onStream` as a duplex stream (the shape
   * openStream returns); streams to other ports are refused (MeshError code "SERVICE_PORT"). */
  async host({ onStream, port } = {}) {
    if (onStream !== undefined && typeof onStream !== "function") throw new TypeError("onStream must be a function");
    if (onStream !== undefined && !(Number.isInteger(port) && port >= 1 && port <= 65535))
      throw new TypeError(`port must be an integer 1..65535, got ${port}`);
    const vpn = this._require();
    const { pyodide } = await runtime;
    const hostTab = pyodide.runPython("from zmesh.browser.onion import host_tab; host_tab");
    // A handler that throws or rejects is reported as an "error" event and its stream closed.
    const accept = onStream && ((stream) => {
      const wrapped = duplex(stream);
      const failed = (err) => { this._emit("error", err); wrapped.close(); };
      try { Promise.resolve(onStream(wrapped)).catch(failed); } catch (err) { failed(err); }
    });
    this.address = await call("could not host the onion service", hostTab, vpn, pyBytes(await loadServiceKey()),
                              port ?? 0, accept);
    return this.address;
  }

  async send(data) {
    await this._require().send(pyBytes(data));
  }

  /** Send `data` to `destination` (a PeerId) as `n` shares over pairwise disjoint circuits, any `k`
   * of which rebuild it within `ttl` seconds; fewer reveal nothing of it. Resolves how many shares
   * arrived; rejects with a MeshError of type "SplitDeliveryError" when fewer than `k` did. */
  async sendSplit(destination, data, { k = 2, n = 3, ttl = 300 } = {}) {
    return call("split message not delivered", this._require().send_split, destination, pyBytes(data), k, n, ttl);
  }

  async receive() {
    const message = await this._require().receive();
    return new Uint8Array(message.toJs ? message.toJs() : message);
  }

  /** The tab's numbers (MeshStats); after disconnect() those of the closed node (no links). */
  async getStats() {
    if (!this._tab) return { connected: false, state: this.state, links: 0 };
    const stats = this._tab.stats();
    const plain = stats.toJs({ dict_converter: Object.fromEntries });
    stats.destroy();
    return { ...plain, state: this.state };
  }

  /** Check `options`, then apply them to the running tab: resolves once applied (the circuit
   * rebuilt if a path option changed). Before connect() or after disconnect() it only stores them. */
  async updateConfig(options) {
    const changes = validate(options);
    if (!this._tab || this._tab.closed) {
      Object.assign(this.options, changes);
      return;
    }
    const fixed = JOIN_ONLY.filter((key) => key in changes && JSON.stringify(changes[key]) !== JSON.stringify(this.options[key]));
    if (fixed.length)
      throw new MeshError("updateConfig", { type: "ConfigError", code: "CONFIG_ERROR",
        message: `${fixed.join(", ")} can only change while disconnected (disconnect(), then connect(options))` });
    const { pyodide } = await runtime;
    await call("updateConfig failed", this._tab.update_config, pyodide.toPy(changes));
    Object.assign(this.options, changes);
  }

  /** Close the circuits, and, unless `keepRelaying` (for a tab that relays), the links and signaling:
   * the tab leaves the directory. connect() afterwards joins again with the same PeerId (persistent
   * identity) or builds a circuit on the still relaying node. */
  async disconnect({ keepRelaying = false } = {}) {
    if (this._joining) await this._joining.catch(() => {});
    if (!this._tab || this._tab.closed) return;
    this._phase = "disconnecting";
    try {
      await call("disconnect failed", this._tab.disconnect, keepRelaying);
    } finally {
      this._phase = null;
    }
  }
}
