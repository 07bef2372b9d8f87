#!/usr/bin/python3
"""A real SMTP server for snapdump's notification tests (aiosmtpd, Debian's
python3-aiosmtpd): stores every message it accepts as <n>.eml plus <n>.json
(envelope sender, recipients, whether TLS and AUTH were used) in DIR, and
prints its port (and writes it to DIR/port) once it listens.

  mailsink.py DIR [--mode insecure|starttls|tls] [--cert PEM --key PEM] [--user U --password P]
"""
import argparse, json, os, signal, socket, ssl, sys, threading
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("--mode", default="insecure", choices=["insecure", "starttls", "tls"])
ap.add_argument("--cert"); ap.add_argument("--key")
ap.add_argument("--user"); ap.add_argument("--password")
a = ap.parse_args()

class Sink:
    count = 0
    async def handle_DATA(self, server, session, envelope):
        Sink.count += 1
        base = os.path.join(a.dir, str(Sink.count))
        with open(base + ".eml", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        with open(base + ".json", "w") as f:
            json.dump({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                       "tls": server.transport.get_extra_info("ssl_object") is not None, "auth": bool(session.authenticated)}, f)
        return "250 Message accepted for delivery"

def authenticator(server, session, envelope, mechanism, auth_data):
    if isinstance(auth_data, LoginPassword) and auth_data.login.decode() == a.user and auth_data.password.decode() == a.password:
        return AuthResult(success=True)
    return AuthResult(success=False, handled=False)

s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
kw = {}
if a.mode != "insecure":
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(a.cert, a.key)
    if a.mode == "tls":
        kw["ssl_context"] = ctx
    else:
        kw["tls_context"] = ctx
        kw["require_starttls"] = True
if a.user:
    kw["authenticator"] = authenticator
    # Implicit TLS is not seen as TLS by aiosmtpd's AUTH check; the connection is encrypted anyway.
    kw["auth_require_tls"] = a.mode == "starttls"
else:
    kw["auth_require_tls"] = False

# Controller's readiness check connects without TLS; with implicit TLS it must speak TLS.
class Ctl(Controller):
    def _trigger_server(self):
        if a.mode != "tls":
            return super()._trigger_server()
        c = ssl.create_default_context()
        c.check_hostname = False
        c.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port), 5) as raw, c.wrap_socket(raw) as t:
            t.recv(1024)

ctl = Ctl(Sink(), hostname="127.0.0.1", port=port, server_hostname="localhost", **kw)
ctl.start()
print(port, flush=True)
with open(os.path.join(a.dir, "port.tmp"), "w") as f:
    f.write(str(port))
os.rename(os.path.join(a.dir, "port.tmp"), os.path.join(a.dir, "port"))
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())
stop.wait()
ctl.stop()
