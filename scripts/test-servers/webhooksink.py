#!/usr/bin/python3
"""A real HTTP server for snapdump's webhook tests: stores each request as
<n>.json (method, path, headers, body) in DIR, answers STATUS (default 200),
and prints its port (and writes it to DIR/port) once it listens.

  webhooksink.py DIR [--status N]
"""
import argparse, json, os, signal, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("--status", type=int, default=200)
a = ap.parse_args()
count = 0

class H(BaseHTTPRequestHandler):
    def handle_any(self):
        global count
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n).decode("utf-8", "replace")
        count += 1
        with open(os.path.join(a.dir, f"{count}.json"), "w") as f:
            json.dump({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}, f)
        self.send_response(a.status)
        self.send_header("Content-Length", "0")
        self.end_headers()
    do_POST = do_PUT = do_GET = handle_any
    def log_message(self, *args):
        pass

srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
with open(os.path.join(a.dir, "port.tmp"), "w") as f:
    f.write(str(srv.server_address[1]))
os.rename(os.path.join(a.dir, "port.tmp"), os.path.join(a.dir, "port"))
signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=srv.shutdown).start())
srv.serve_forever()
