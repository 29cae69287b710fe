// The page a person opens: the tab joins the mesh (and relays for it), then shows what it does.
import { MeshVPN } from "/meshvpn.js";

const $ = (id) => document.getElementById(id);
const samples = [];  // kB/s over the last minute
let lastIn = 0;

function status(text, kind = "") {
  $("status").textContent = text;
  $("status").className = "pill " + kind;
}

function problem(err) {
  $("errors-card").hidden = false;
  const item = document.createElement("li");
  item.textContent = (err && err.message ? err.message : String(err)).split("\n").filter(Boolean).pop();
  $("errors").prepend(item);
}

function drawChart() {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const peak = Math.max(1, ...samples);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#2e5bff";
  ctx.lineWidth = 2;
  ctx.beginPath();
  samples.forEach((value, i) => {
    const x = (i / 59) * canvas.width;
    const y = canvas.height - 4 - (value / peak) * (canvas.height - 12);
    i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
  });
  ctx.stroke();
}

// e.g. "2 WebRTC, 1 WebSocket (1 fallback: ICE failed)": which transport carries this tab's links.
function describeTransport(transport) {
  const names = { webrtc: "WebRTC", websocket: "WebSocket" };
  const parts = Object.entries(transport.open_links).map(([kind, n]) => `${n} ${names[kind] || kind}`);
  let text = parts.join(", ") || "none";
  if (transport.fallbacks) {
    text += ` (${transport.fallbacks} fell back to WebSocket: ${transport.last_fallback})`;
  }
  return text;
}

async function render(vpn) {
  const stats = await vpn.getStats();
  $("peer").textContent = vpn.peerId;
  $("relaying").textContent = `yes — ${stats.metrics.circuits_relayed || 0} circuits relayed for others`;
  $("links").textContent = stats.links;
  $("transport").textContent = describeTransport(stats.transport);
  $("path").replaceChildren(...stats.path.map((peer, i) => {
    const item = document.createElement("li");
    item.textContent = `${peer.slice(0, 16)}…` + (i === stats.path.length - 1 ? "  (exit)" : "");
    return item;
  }));
  $("in").textContent = stats.bytes_in.toLocaleString();
  $("out").textContent = stats.bytes_out.toLocaleString();
  const rate = Math.max(0, stats.bytes_in - lastIn) / 1000;
  lastIn = stats.bytes_in;
  samples.push(rate);
  if (samples.length > 60) samples.shift();
  $("rate").textContent = rate.toFixed(1);
  drawChart();
}

async function main() {
  const vpn = new MeshVPN({ hops: 3 });
  vpn.on("error", problem);
  vpn.on("message", (bytes) => {
    const item = document.createElement("li");
    item.textContent = new TextDecoder().decode(bytes);
    if ($("inbox").firstElementChild?.classList.contains("muted")) $("inbox").replaceChildren();
    $("inbox").append(item);
  });
  status("loading the Python runtime…");
  const started = performance.now();
  try {
    await vpn.connect();
  } catch (err) {
    status("could not join the mesh", "bad");
    problem(err);
    return;
  }
  status(`connected in ${((performance.now() - started) / 1000).toFixed(1)} s`, "ok");
  window.vpn = vpn;
  const relays = await (await fetch("/healthz")).json();
  $("relays").textContent = `${relays.relays} relays known to the directory`;
  // A circuit that dies is rebuilt by the tab itself (docs/browser.md): say so while it happens.
  vpn.on("disconnect", (info) => status(`circuit lost (${info.reason})` + (info.rebuilding ? ", rebuilding…" : ""), "bad"));
  vpn.on("connect", () => status("connected (circuit rebuilt)", "ok"));
  await render(vpn);
  setInterval(() => render(vpn).catch(problem), 1000);

  $("fetch").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("fetch-result").textContent = "fetching through 3 relays…";
    const t0 = performance.now();
    try {
      const url = $("url").value;
      const { status: code, body } = await vpn.fetch(url);
      // http:// crosses the exit in clear; https:// is TLS from this tab to the server.
      const privacy = url.startsWith("https://") ? "TLS end to end: the exit saw only ciphertext"
                                                 : "unencrypted at the exit: it could read and change this";
      $("fetch-result").textContent =
        `HTTP ${code}, ${body.length.toLocaleString()} bytes in ${Math.round(performance.now() - t0)} ms, ${privacy}`;
    } catch (err) {
      $("fetch-result").textContent = "fetch failed";
      problem(err);
    }
  });

  let sender = null;
  $("message").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      // A second node of this tab carries outgoing messages on a circuit ending at the recipient.
      if (!sender || sender.options.destination !== $("to").value.trim()) {
        sender = new MeshVPN({ hops: 3, destination: $("to").value.trim(), relay: false, identity: "ephemeral" });
        await sender.connect();
      }
      await sender.send(new TextEncoder().encode($("text").value));
      $("text").value = "";
    } catch (err) {
      problem(err);
    }
  });
}

main();
