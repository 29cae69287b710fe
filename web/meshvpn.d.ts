// Types for web/meshvpn.js — the zmesh MeshVPN JavaScript API.

export interface MeshOptions {
  /** Relays per circuit (2..8; the design's default is 3). */
  hops: number;
  /** How the circuit's exit reaches the target. 'direct' (default): the exit relay connects itself.
   *  'proxy': an upstream-proxy exit, which forwards through an HTTP CONNECT proxy its operator
   *  configured (`--exit-upstream`); its policy still applies to the target. 'cloudflare' is a
   *  documented alias of 'proxy' — any upstream-proxy exit, whoever runs the proxy: no vendor is
   *  contacted or preferred. Exits declare their kind themselves (docs/exits.md). */
  exit: "direct" | "proxy" | "cloudflare";
  /** Two-letter country code the exit should be in, as the exit declares it (not measured yet). */
  country?: string;
  /** Two-letter country codes whose relays (by the country they declare) no hop may be in. */
  excludeCountries?: string[];
  /** Give this tab's WebRTC links a second, unordered DataChannel without retransmissions that
   *  carries the circuits' cells under Tetrys forward error correction (read when the tab joins). */
  enableFEC?: boolean;
  /** Link transport. 'auto' (default): WebRTC DataChannels first, WebSocket when ICE fails or
   *  misses `webrtcTimeout`; 'webrtc' / 'websocket' force one. Applies to links opened after a change. */
  transport?: "webrtc" | "websocket" | "auto";
  /** STUN/TURN servers for WebRTC (none are needed on one LAN; across NATs a TURN server is). */
  iceServers?: { urls: string | string[]; username?: string; credential?: string }[];
  /** 'relay': only TURN candidates, so peers never learn this tab's addresses. Default 'all'. */
  icePolicy?: "all" | "relay";
  /** Seconds a WebRTC link may take to open before 'auto' falls back (default 10). */
  webrtcTimeout?: number;
  /** 'persistent' (default): keep this tab's key and entry guards in IndexedDB so a reload keeps its PeerId
   *  and guards; 'ephemeral': a fresh key and guards held in memory only. */
  identity?: "persistent" | "ephemeral";
  /** Offer this tab as a relay for others (default true). */
  relay?: boolean;
  /** Seconds a relaying tab's published descriptor is valid (default 10800, 60..86400, and no more
   *  than the signal server accepts: 3 h by default). The tab republishes it every third of this, so
   *  it stays listed while open. */
  descriptorLifetime?: number;
  /** PeerId of the first hop of every circuit (e.g. a friend's tab); otherwise the tab's entry guard. */
  entry?: string;
  /** Another node's PeerId, or an onion service's `<address>.mesh` (over a rendezvous circuit,
   *  neither side learning where the other is): `send` then carries messages end to end to it.
   *  connect() on a tab already in the mesh builds the new circuit on the same node (a hosted
   *  service stays up). */
  destination?: string;
  /** PEM certificates trusted for `https://` fetches besides the bundled roots (certifi's copy of
   *  Mozilla's list), e.g. a test CA. Read when the tab joins. */
  extraCAs?: string[];
}

export interface MeshStats {
  connected: boolean;
  peer_id?: string;
  circuit?: number | null;
  /** PeerIds of the circuit's hops, first to last. */
  path?: string[];
  /** PeerIds of the primary entry guards, preferred first (kept in IndexedDB with a persistent identity). */
  guards?: string[];
  bytes_in?: number;
  bytes_out?: number;
  links?: number;
  /** Open links per transport, links dialed per transport, and WebRTC → WebSocket fallbacks. */
  transport?: { open_links: Record<string, number>; webrtc: number; websocket: number; fallbacks: number;
                last_fallback: string | null };
  metrics?: Record<string, number>;
  options?: Record<string, unknown>;
}

export interface FetchResult {
  status: number;
  /** Header names lower-cased; a repeated header's values joined with ", ". */
  headers: Record<string, string>;
  body: Uint8Array;
}

/** How MeshVPN's promises reject when the mesh refuses or breaks something. `code` is stable:
 *  the name of the circuit's DESTROY reason or the stream's END reason (zmesh.cells DestroyReason /
 *  EndReason), for code that must tell a refused connection from a dead circuit without reading
 *  the message. */
export class MeshError extends Error {
  readonly name: "MeshError";
  /** The zmesh error class: "StreamError", "CircuitError", "ConfigError", "TransportError", ... */
  readonly type: string;
  /** null for errors without a reason (a bad option, no usable relays). */
  readonly code: StreamEndCode | CircuitDestroyCode | null;
}

/** Why a stream ended abnormally ("DESTROYED": the circuit under it went). */
export type StreamEndCode = "MISC" | "RESOLVE_FAILED" | "CONNECT_REFUSED" | "EXIT_POLICY" | "DESTROYED"
  | "TIMEOUT" | "PROTOCOL" | "DONE" | "SERVICE_PORT";
/** Why a circuit failed to build or was torn down. */
export type CircuitDestroyCode = "NONE" | "PROTOCOL" | "INTERNAL" | "REQUESTED" | "TIMEOUT" | "CONNECT_FAILED"
  | "RESOURCE_LIMIT" | "LINK_CLOSED" | "TAMPERED" | "ONION_KEY_OUTDATED" | "BAD_SENDME" | "FLOW_VIOLATION";

type Events = {
  message: (data: Uint8Array) => void;
  connect: (stats: MeshStats) => void;
  disconnect: (info: object) => void;
  error: (error: MeshError | Error) => void;
};

export class MeshVPN {
  /** Throws a TypeError naming the bad option. */
  constructor(options?: Partial<MeshOptions>);
  /** This tab's PeerId (56 base32 characters) once connected. */
  readonly peerId: string | null;
  /** Boots the in-tab node (Pyodide), joins the mesh and builds a circuit (rejects with a MeshError
   *  when no circuit could be built: `code` names the last DESTROY reason, null if too few relays). */
  connect(options?: Partial<MeshOptions>): Promise<void>;
  disconnect(): Promise<void>;
  /** GET an http:// or https:// URL through the circuit's exit. https:// runs TLS inside the tab
   *  (tlslite-ng), checking the server's chain against the bundled roots and `extraCAs`
   *  (docs/browser.md says exactly what is checked), so the exit relays only ciphertext; http:// is
   *  readable and changeable by the exit. Rejects with a MeshError if the stream ends abnormally
   *  (circuit destroyed, exit error) or the certificate is refused: a truncated body is never
   *  returned as complete. */
  fetch(url: string): Promise<FetchResult>;
  /** A TCP-like stream to host:port through the exit (resolved there); rejects with a MeshError if
   *  the exit refuses it (`code` "CONNECT_REFUSED", "EXIT_POLICY", ...). `read()` resolves null at
   *  a normal end and rejects with a MeshError at an abnormal one. */
  openStream(host: string, port: number): Promise<{
    read(): Promise<Uint8Array | null>; write(data: Uint8Array): Promise<void>; close(): Promise<void>;
  }>;
  /** Send one message to the `destination` node. */
  send(data: Uint8Array): Promise<void>;
  /** Send `data` to `destination` (a PeerId) as `n` shares over pairwise disjoint circuits, any `k`
   *  of which rebuild it before `ttl` seconds pass (default 2 of 3, 300 s; 2 <= k <= n <= 16, ttl
   *  1..3600); fewer than `k` reveal nothing of it. The destination emits one "message" event.
   *  Resolves how many shares arrived; rejects with a MeshError of type "SplitDeliveryError" (its
   *  message names how many were stored and why the others failed) when fewer than `k` did. */
  sendSplit(destination: string, data: Uint8Array, options?: { k?: number; n?: number; ttl?: number }): Promise<number>;
  /** The next message sent to this tab (split messages included, once rebuilt). */
  receive(): Promise<Uint8Array>;
  on<E extends keyof Events>(event: E, callback: Events[E]): void;
  getStats(): MeshStats;
  updateConfig(options: Partial<MeshOptions>): void;
  /** This origin's onion-service key: the 32-byte Ed25519 seed behind its .mesh address, kept in
   *  IndexedDB and made on first use (no connect() needed). The same bytes as the "seed" in a native
   *  `zmesh service`'s service.key (docs/onion-services.md). Anyone holding it can run the service. */
  exportServiceKey(): Promise<Uint8Array>;
  /** Make `seed` this origin's service key. Rejects if a different key is already kept, unless
   *  `replace` is true (that key's address is then lost unless it was exported); TypeError unless
   *  `seed` is 32 bytes. */
  importServiceKey(seed: Uint8Array, options?: { replace?: boolean }): Promise<void>;
  /** This tab's `.mesh` address once `host()` resolved, else null. */
  readonly address: string | null;
  /** Host this origin's onion service (its key: exportServiceKey) from this tab, after connect():
   *  keeps ~3 introduction circuits and publishes the descriptor at this page's origin
   *  (`/v1/onion/`), then resolves the `.mesh` address. Messages sent to it arrive as "message"
   *  events; a stream to `port` is accepted and handed to `onStream` (the shape openStream returns);
   *  a stream to any other port is refused (the opener's MeshError `code` "SERVICE_PORT"). TypeError
   *  for a bad `onStream` or `port`; a MeshError of type "InvalidState" if this tab already hosts. */
  host(options?: { onStream?: (stream: DuplexStream) => void; port?: number }): Promise<string>;
}

/** What openStream resolves and host()'s onStream receives. */
export interface DuplexStream {
  read(): Promise<Uint8Array | null>; write(data: Uint8Array): Promise<void>; close(): Promise<void>;
}

/** This origin's onion-service key, made on first use (what exportServiceKey returns). */
export function loadServiceKey(): Promise<Uint8Array>;
