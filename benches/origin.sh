# Sourced by the benchmark scripts: start_origin DIR starts the tiny nginx origin
# every side-by-side run uses (127.0.0.1:19000, answers "ok", no access log,
# keep-alive without limit) with its files in DIR; stop it with
# kill $(cat DIR/origin.pid).
start_origin() {
  cat > "$1/origin.conf" <<C
worker_processes 1; pid $1/origin.pid; error_log $1/origin.err warn; daemon on;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 10000000;
  server { listen 127.0.0.1:19000 reuseport; location / { return 200 "ok\n"; } } }
C
  nginx -c "$1/origin.conf" -e "$1/origin.err"
}
