"""An HTTP proxy between the broker and the S3 server that injects faults on command: errors (500/503)
for a fraction of requests, slow responses, or the store being down (connections reset)."""
import http.client
import http.server
import random
import socket
import threading
import time


class FaultyProxy:
    def __init__(self, upstream_host, upstream_port):
        self.upstream = (upstream_host, upstream_port)
        self.mode, self.rate, self.delay = "ok", 0.0, 0.0
        self.counts = {"requests": 0, "injected": 0}
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                proxy.counts["requests"] += 1
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                mode, rate, delay = proxy.mode, proxy.rate, proxy.delay
                if mode == "down":
                    proxy.counts["injected"] += 1
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if mode in ("500", "503") and random.random() < rate:
                    proxy.counts["injected"] += 1
                    msg = b"<Error><Code>InternalError</Code></Error>" if mode == "500" else \
                        b"<Error><Code>SlowDown</Code></Error>"
                    self.send_response(int(mode))
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                if mode == "slow":
                    proxy.counts["injected"] += 1
                    time.sleep(delay)
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                # Headers as sent, Host included: it is covered by the request's SigV4 signature.
                headers = dict(self.headers.items())
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def set(self, mode, rate=1.0, delay=0.0):
        self.mode, self.rate, self.delay = mode, rate, delay

    def close(self):
        self.server.shutdown()
