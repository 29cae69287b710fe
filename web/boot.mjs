// Boot the zmesh core in this tab: Pyodide, msgpack and the zmesh package, all from this origin.
// The manifest and the core are fetched while the runtime loads, and the wheels are loaded together:
// joining waits for the slowest of them rather than for their sum.
import { loadPyodide } from "/node_modules/pyodide/pyodide.mjs";
import * as zmeshCrypto from "/zmesh-crypto.js";

export async function bootZmesh(progress = () => {}) {
  const started = performance.now();
  progress("loading the Python runtime");
  const manifest = fetch("/build/manifest.json").then((response) => response.json());
  const core = manifest.then((m) => fetch("/" + m.core)).then((response) => response.arrayBuffer());
  core.catch(() => {});  // a failed fetch is reported where it is awaited, not also as unhandled
  const pyodide = await loadPyodide({ indexURL: "/node_modules/pyodide/" });
  progress("loading packages");
  await pyodide.loadPackage((await manifest).wheels.map((wheel) => "/" + wheel));
  pyodide.unpackArchive(await core, "zip", { extractDir: "/home/pyodide/zmesh-core" });
  pyodide.runPython("import sys; sys.path.insert(0, '/home/pyodide/zmesh-core')");
  pyodide.registerJsModule("zmesh_js_crypto", zmeshCrypto);
  progress("ready");
  return { pyodide, manifest: await manifest, bootMs: performance.now() - started };
}
