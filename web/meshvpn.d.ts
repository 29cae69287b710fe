// Types for web/meshvpn.js — the zmesh MeshVPN JavaScript API.

export interface MeshOptions {
  /** Relays per circuit (2..8, default 3: kept over the seed's 2, measured in docs/browser.md
   *  "MeshOptions defaults"). Changed by updateConfig, the circuit is rebuilt. */
  hops: number;
  /** How the circuit's exit reaches the target. 'direct' (default): the exit relay connects itself.
   *  'proxy': an upstream-proxy exit, which forwards through an HTTP CONNECT proxy its operator
   *  configured (`--exit-upstream`); its policy still applies to the target. 'cloudflare' is a
   *  documented alias of 'proxy' — any upstream-proxy exit, whoever runs the proxy: no vendor is
   *  contacted or preferred. Exits declare their kind themselves (docs/exits.md). The default stays
   *  'direct', the kind every stock exit is (docs/browser.md "MeshOptions defaults"). */
  exit: "direct" | "proxy" | "cloudflare";
  /** Two-letter country code the exit should be in, as the exit declares it (not measured yet).
   *  Default: none (any country). updateConfig rebuilds the circuit, as it does for `exit`. */
  country?: string;
  /** Two-letter country codes whose relays (by the country they declare) no hop may be in. */
  excludeCountries?: string[];
  /** Give this tab's WebRTC links a second, unordered DataChannel without retransmissions that
   *  carries the circuits' cells under Tetrys forward error correction. Default false (kept over the
   *  seed's true, measured in docs/browser.md "MeshOptions defaults"); refused with
   *  `transport: 'websocket'`. Changed by updateConfig, it applies to WebRTC links dialed afterwards. */
  enableFEC?: boolean;
  /** Link transport. 'auto' (default): WebRTC DataChannels first, WebSocket when ICE fails or
   *  misses `webrtcTimeout`; 'webrtc' / 'websocket' force one. Changed by updateConfig to a forced
   *  transport, the tab closes its links of the other one (except the home link a relaying tab is
   *  reachable through) and rebuilds the circuit, so its new links use the new transport. Why 'auto'
   *  stays the default: docs/browser.md "MeshOptions defaults". */
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
  /** Cover traffic on this tab's first link, both ways (docs/anonymity.md): 'off' (default; idle
   *  links still get keep-alive padding), or a constant-rate / Poisson machine at RATE cells (1 KiB)
   *  per second, which caps this tab's throughput at RATE KiB/s. A first hop whose limit is lower
   *  refuses it (the circuit closes with reason padding-limit). Read when the tab joins. */
  cover?: "off" | `poisson:${number}` | `constant:${number}`;
  /** Directory authorities as "URL#FINGERPRINT" (1..9, as `zmesh client --authority`): the tab then
   *  takes relays only from their consensus, which it verifies itself (Ed25519 and ML-DSA-65
   *  signatures from more than half of them, validity window), fetched from their origins and kept
   *  in IndexedDB; otherwise connect() rejects with MeshError "CONSENSUS_REFUSED" naming the missing
   *  signatures. Read when the tab joins (docs/directory.md §8). */
  authorities?: string[];
}

export interface MeshStats {
  connected: boolean;
  /** The instance's state (see MeshState). */
  state: MeshState;
  /** Whether the tab is offering itself as a relay (listed in the directory). */
  relaying?: boolean;
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
  /** The reason's name where the error has one (a stream's END, a circuit's DESTROY), else the
   *  error class's name in capitals (ErrorClassCode): never null. */
  readonly code: StreamEndCode | CircuitDestroyCode | ErrorClassCode;
}

/** The code of an error without a reason: its zmesh class ("ConfigError" → "CONFIG_ERROR"). A
 *  CircuitError without a reason ("CIRCUIT_ERROR") is a build that found too few usable relays. */
export type ErrorClassCode = "ZMESH_ERROR" | "PROTOCOL_ERROR" | "ONION_ADDRESS_ERROR" | "CRYPTO_ERROR"
  | "CIRCUIT_ERROR" | "STREAM_ERROR" | "CONFIG_ERROR" | "TRANSPORT_ERROR" | "LINK_CLOSED" | "EXIT_POLICY_ERROR"
  | "ONION_AUTH_ERROR" | "FEC_ERROR" | "SPLIT_DELIVERY_ERROR" | "TLS_ERROR" | "CERTIFICATE_ERROR" | "INVALID_STATE"
  | "CONSENSUS_REFUSED";

/** Where a MeshVPN is (docs/browser.md "Lifecycle" has the same table):
 *  - "disconnected": no circuit and no relaying: before connect(), after disconnect(), after a
 *    failed connect() (then no node either: nothing is left running).
 *    connect() → "connecting".
 *  - "connecting": booting the node, joining, building the first circuit. → "connected", or
 *    "disconnected" when connect() rejects (nothing is left running).
 *  - "connected": a circuit is up. connect() does nothing (same node, same PeerId, same circuit);
 *    updateConfig() with a path option (hops, exit, country, transport, entry, excludeCountries)
 *    builds the new circuit, then closes the old one, and stays "connected"; the circuit dying →
 *    "reconnecting"; disconnect() → "disconnecting".
 *  - "reconnecting": the circuit died (a `disconnect` event with `rebuilding: true` said why and
 *    which hop is blamed); the tab rebuilds it without that hop, with jittered backoff, and emits
 *    `connect` → "connected". After 8 failed rounds it emits an `error` (code: the DESTROY's
 *    reason) and waiting calls reject with it; the node stays up ("relaying" if the tab relays,
 *    else "disconnected"), and connect() builds a circuit on it again.
 *  - "disconnecting": disconnect() running. → "disconnected", or "relaying" with keepRelaying.
 *  - "relaying": no circuit of its own, still a relay for others (disconnect({ keepRelaying: true })):
 *    listed, signed in, holding links. connect() builds a circuit on the same node → "connected";
 *    disconnect() → "disconnected". */
export type MeshState = "disconnected" | "connecting" | "connected" | "reconnecting" | "disconnecting" | "relaying";

/** What a `disconnect` event carries: the circuit lost, the DESTROY's reason ("REQUESTED" for
 *  disconnect()), the hop blamed and whether the tab is rebuilding. `failed_hop` is exact when the
 *  tab's own link to it closed; for a DESTROY that came down the circuit (relays do not say who
 *  sent it) it is the second hop, the first that may have failed: a later hop that died is found
 *  and avoided while the circuit is rebuilt. null for disconnect(). */
export interface DisconnectInfo {
  circuit: number;
  reason: CircuitDestroyCode;
  failed_hop: string | null;
  rebuilding: boolean;
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
  disconnect: (info: DisconnectInfo) => void;
  error: (error: MeshError | Error) => void;
};

export class MeshVPN {
  /** Throws a TypeError naming the bad option. */
  constructor(options?: Partial<MeshOptions>);
  /** This tab's PeerId (56 base32 characters) once connected. */
  readonly peerId: string | null;
  /** See MeshState for each state and what leads from one to another. */
  readonly state: MeshState;
  /** Boots the in-tab node (Pyodide), joins the mesh and builds a circuit (rejects with a MeshError
   *  when no circuit could be built: `code` names the last DESTROY reason, "CIRCUIT_ERROR" if too
   *  few relays; the node is then closed). On a connected instance it only applies `options` (as
   *  updateConfig) and resolves: one instance is one node with one PeerId. While "reconnecting" it
   *  waits for the rebuild; while "relaying" it builds a circuit on the running node. */
  connect(options?: Partial<MeshOptions>): Promise<void>;
  /** Destroys the circuits and stops rebuilding; then closes the signaling sessions and every link,
   *  so the tab is no longer listed in the directory and holds no link — unless `keepRelaying` (for
   *  a tab started with `relay: true`), which leaves it "relaying" for others. Emits `disconnect`
   *  (reason "REQUESTED") if a circuit was up. A later connect() joins again as the same PeerId
   *  (persistent identity). */
  disconnect(options?: { keepRelaying?: boolean }): Promise<void>;
  /** GET an http:// or https:// URL through the circuit's exit. https:// runs TLS inside the tab
   *  (tlslite-ng), checking the server's chain against the bundled roots and `extraCAs`
   *  (docs/browser.md says exactly what is checked), so the exit relays only ciphertext; http:// is
   *  readable and changeable by the exit. Rejects with a MeshError if the stream ends abnormally
   *  (circuit destroyed, exit error) or the certificate is refused: a truncated body is never
   *  returned as complete. A fetch in flight when the circuit dies rejects with code "DESTROYED";
   *  one started while the circuit is being rebuilt waits for it. */
  fetch(url: string): Promise<FetchResult>;
  /** A TCP-like stream to host:port through the exit (resolved there); rejects with a MeshError if
   *  the exit refuses it (`code` "CONNECT_REFUSED", "EXIT_POLICY", ...). `read()` resolves null at
   *  a normal end and rejects with a MeshError at an abnormal one ("DESTROYED": the circuit died;
   *  a stream opened while the circuit is being rebuilt waits for the new one). */
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
  /** The tab's numbers; after disconnect() those of the closed node (no links). */
  getStats(): Promise<MeshStats>;
  /** Rejects with a TypeError naming a bad option; otherwise applies `options` to the running tab
   *  and resolves once applied: a path option (hops, exit, country, transport, entry,
   *  excludeCountries) rebuilds the circuit (the old one closes once its streams end; if no new one
   *  can be built the old one is kept where it still stands and this rejects with a MeshError);
   *  `transport` also swaps the links (see MeshOptions.transport); enableFEC, iceServers, icePolicy
   *  and webrtcTimeout apply to WebRTC links dialed afterwards, extraCAs to later https:// fetches,
   *  `destination` rebuilds the message circuit. `relay`, `identity` and `descriptorLifetime` cannot
   *  change on a running tab (MeshError "CONFIG_ERROR"). Before connect() or after disconnect() it
   *  only stores the options for the next connect(). */
  updateConfig(options: Partial<MeshOptions>): Promise<void>;
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
