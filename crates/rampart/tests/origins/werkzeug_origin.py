"""A Werkzeug (WSGI) origin for crates/rampart/tests/origin_agreement.rs.

It reads requests the way a typical Flask/Werkzeug app does and answers every
request with JSON saying what it saw: the decoded path (request.path), the
handler a Flask-style router would pick, and the phone value the app would act
on. Listens on an ephemeral loopback port and prints the port on stdout.

GET /__hits (sent directly, never through Rampart) lists the x-test-id of every
request seen so far, so the test can prove that refused requests never arrived.
"""

import json
import logging
import sys
import threading

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

HITS = []
HITS_LOCK = threading.Lock()


def handler_for(path):
    # Flask routes "/api/auth/register" (strict_slashes redirects the other form;
    # count both as the handler being reached).
    if path in ("/api/auth/register", "/api/auth/register/"):
        return "register"
    if path in ("/api/auth/login", "/api/auth/login/"):
        return "login"
    return "other"


def read_phone(request):
    if request.is_json:
        data = request.get_json(silent=True)
        if isinstance(data, dict):
            value = data.get("phone")
            return value if value is None or isinstance(value, str) else json.dumps(value)
        return None
    # request.values merges args and form; MultiDict.get returns the first value.
    return request.values.get("phone")


@Request.application
def app(request):
    if request.path == "/healthz":
        return Response("ok", status=200, mimetype="text/plain")
    if request.path == "/__hits":
        with HITS_LOCK:
            body = json.dumps(list(HITS))
        return Response(body, status=200, mimetype="application/json")
    test_id = request.headers.get("x-test-id")
    with HITS_LOCK:
        HITS.append(test_id)
    answer = {
        "stack": "werkzeug",
        "id": test_id,
        "method": request.method,
        "path": request.path,
        "query": request.query_string.decode("latin-1"),
        "phone": read_phone(request),
        "handler": handler_for(request.path),
    }
    resp = Response(json.dumps(answer), status=200, mimetype="application/json")
    if test_id is not None:
        resp.headers["x-test-id"] = test_id
    return resp


def main():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(server.server_port, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
