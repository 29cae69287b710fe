// Boot the zmesh core in this tab: Pyodide, msgpack and the zmesh package, all from this origin.
import { loadPyodide } from "/node_modules/pyodide/pyodide.mjs";
import * as zmeshCrypto from "/zmesh-crypto.js";

export async function bootZmesh(progress = () => {}) {
  const started = performance.now();
  progress("loading the Python runtime");
  const pyodide = await loadPyodide({ indexURL: "/node_modules/pyodide/" });
  const manifest = await (await fetch("/build/manifest.json")).json();
  progress("loading packages");
  for (const wheel of manifest.wheels) {
    await pyodide.loadPackage("/" + wheel);
  }
  const core = await (await fetch("/" + manifest.core)).arrayBuffer();
  pyodide.unpackArchive(core, "zip", { extractDir: "/home/pyodide/zmesh-core" });
  pyodide.runPython("import sys; sys.path.insert(0, '/home/pyodide/zmesh-core')");
  pyodide.registerJsModule("zmesh_js_crypto", zmeshCrypto);
  progress("ready");
  return { pyodide, manifest, bootMs: performance.now() - started };
}
