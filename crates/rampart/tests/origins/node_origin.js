// A Node.js origin for crates/rampart/tests/origin_agreement.rs, using only the
// `http` module, URL, URLSearchParams and JSON.parse, the way a small hand-written
// Node service reads requests. Answers every request with JSON saying what it
// saw: the decoded path, the handler it would route to and the phone value it
// would act on. Listens on an ephemeral loopback port and prints the port on
// stdout.
//
// GET /__hits (sent directly, never through Rampart) lists the x-test-id of every
// request seen so far, so the test can prove that refused requests never arrived.
"use strict";

const http = require("http");

const hits = [];

function decodedPath(rawUrl) {
  try {
    return decodeURIComponent(new URL(rawUrl, "http://x").pathname);
  } catch (e) {
    return null;
  }
}

function handlerFor(path) {
  if (path === "/api/auth/register" || path === "/api/auth/register/") return "register";
  if (path === "/api/auth/login" || path === "/api/auth/login/") return "login";
  return "other";
}

function isJson(contentType) {
  const essence = String(contentType || "").split(";")[0].trim();
  return /^application\/([\w.!#$&^-]+\+)?json$/i.test(essence);
}

function readPhone(req, body) {
  if (isJson(req.headers["content-type"])) {
    try {
      const data = JSON.parse(body);
      if (data !== null && typeof data === "object" && !Array.isArray(data)) {
        const v = data.phone;
        if (v === undefined || v === null) return null;
        return typeof v === "string" ? v : JSON.stringify(v);
      }
    } catch (e) {
      // fall through: unreadable JSON
    }
    return null;
  }
  const fromBody = new URLSearchParams(body).get("phone");
  if (fromBody !== null) return fromBody;
  let query = "";
  try {
    query = new URL(req.url, "http://x").search;
  } catch (e) {
    query = "";
  }
  return new URLSearchParams(query).get("phone");
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks).toString("utf8");
    const path = decodedPath(req.url);
    if (path === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain", "content-length": "2" });
      res.end("ok");
      return;
    }
    if (path === "/__hits") {
      const text = JSON.stringify(hits);
      res.writeHead(200, {
        "content-type": "application/json",
        "content-length": Buffer.byteLength(text),
      });
      res.end(text);
      return;
    }
    const id = req.headers["x-test-id"] === undefined ? null : req.headers["x-test-id"];
    hits.push(id);
    let query = "";
    try {
      query = new URL(req.url, "http://x").search.replace(/^\?/, "");
    } catch (e) {
      query = "";
    }
    const answer = {
      stack: "node",
      id,
      method: req.method,
      path,
      query,
      phone: readPhone(req, body),
      handler: path === null ? "other" : handlerFor(path),
    };
    const text = JSON.stringify(answer);
    const headers = {
      "content-type": "application/json",
      "content-length": Buffer.byteLength(text),
    };
    if (id !== null) headers["x-test-id"] = id;
    res.writeHead(200, headers);
    res.end(text);
  });
});

server.listen(0, "127.0.0.1", () => {
  process.stdout.write(`${server.address().port}\n`);
});

process.on("SIGTERM", () => process.exit(0));
