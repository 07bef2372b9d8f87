#!/usr/bin/env python3
"""Minimal QMP / guest-agent client for the test guest's scripts.

  qmp.py SOCKET COMMAND [ARGS-JSON]          QMP (capabilities negotiated)
  qmp.py --qga SOCKET COMMAND [ARGS-JSON]    guest agent (guest-sync first)

Options: --timeout SECONDS (default 10), --no-reply (for commands that do
not answer, e.g. guest-shutdown).  Prints the command's "return" value as
JSON on stdout and exits 0; prints the error on stderr and exits 1; exits 2
on connection problems or timeout.  QMP events arriving before the reply
are printed on stderr prefixed with "event: ".
"""
import json
import random
import socket
import sys
import time


class Timeout(Exception):
    pass


class Conn:
    def __init__(self, path, deadline):
        self.deadline = deadline
        self.buf = b""
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(max(0.05, deadline - time.monotonic()))
                self.sock.connect(path)
                return
            except OSError:
                self.sock.close()
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def send(self, obj, prefix=b""):
        self.sock.sendall(prefix + json.dumps(obj).encode() + b"\n")

    def recv(self):
        """Next JSON object (one per line); skips non-JSON garbage."""
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                line = line.strip(b"\xff \r\t")
                if not line:
                    continue
                try:
                    return json.loads(line)
                except ValueError:
                    continue
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise Timeout()
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise Timeout()
            if not data:
                raise ConnectionError("connection closed")
            self.buf += data

    def reply(self):
        while True:
            msg = self.recv()
            if "event" in msg:
                print("event: " + json.dumps(msg), file=sys.stderr)
                continue
            if "return" in msg or "error" in msg:
                return msg


def main(argv):
    qga = False
    timeout = 10.0
    no_reply = False
    pos = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--qga":
            qga = True
        elif a == "--no-reply":
            no_reply = True
        elif a == "--timeout" and i + 1 < len(argv):
            i += 1
            timeout = float(argv[i])
        else:
            pos.append(a)
        i += 1
    if len(pos) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    path, command = pos[0], pos[1]
    cmd = {"execute": command}
    if len(pos) == 3:
        cmd["arguments"] = json.loads(pos[2])

    deadline = time.monotonic() + timeout
    try:
        c = Conn(path, deadline)
        if qga:
            # Resynchronise: the channel may hold a stale partial message.
            while True:
                sync_id = random.randint(1, 2**31 - 1)
                c.send({"execute": "guest-sync-delimited",
                        "arguments": {"id": sync_id}}, prefix=b"\xff")
                # Retry every second: an agent that is not running yet
                # never sees what was sent before it opened its port.
                c.deadline = min(deadline, time.monotonic() + 1.0)
                try:
                    while True:
                        msg = c.reply()
                        if msg.get("return") == sync_id:
                            break
                    break
                except Timeout:
                    if time.monotonic() >= deadline:
                        raise
            c.deadline = deadline
        else:
            c.recv()  # greeting
            c.send({"execute": "qmp_capabilities"})
            msg = c.reply()
            if "error" in msg:
                print(json.dumps(msg["error"]), file=sys.stderr)
                return 1
        c.send(cmd)
        if no_reply:
            return 0
        msg = c.reply()
    except Timeout:
        print(f"qmp.py: {path}: timeout after {timeout} s", file=sys.stderr)
        return 2
    except (OSError, ConnectionError) as e:
        print(f"qmp.py: {path}: {e}", file=sys.stderr)
        return 2
    if "error" in msg:
        print(json.dumps(msg["error"]), file=sys.stderr)
        return 1
    print(json.dumps(msg["return"]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
