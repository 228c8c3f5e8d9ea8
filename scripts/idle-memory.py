#!/usr/bin/env python3
"""Daemon RSS per idle connection, until `chat-zinx bench idle` exists.

Usage: start a release daemon, e.g.
  CHAT_ZINX_SERVER__LISTEN=127.0.0.1:9556 CHAT_ZINX_SERVER__STATE_DIR=/tmp/cz-mem \
  CHAT_ZINX_SESSION__MAX_DEVICES=100000 target/release/chat-zinx serve &
then run: scripts/idle-memory.py 127.0.0.1:9556 5000
It opens N connections that each exchange one ping (idle, not logged in), reads the daemon's
RSS growth, then logs every connection in (token login of one user) and reads it again.
"""
import json
import socket
import struct
import subprocess
import sys
import time

addr = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9556"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
host, port = addr.rsplit(":", 1)
port = int(port)
pid = int(subprocess.check_output(["pgrep", "-f", "chat-zinx serve"]).split()[0])


def rss():
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def send(s, msg_id, body):
    b = body if isinstance(body, bytes) else json.dumps(body).encode()
    s.sendall(struct.pack("<II", len(b), msg_id) + b)


def recv(s):
    h = b""
    while len(h) < 8:
        h += s.recv(8 - len(h))
    length, msg_id = struct.unpack("<II", h)
    b = b""
    while len(b) < length:
        b += s.recv(length - len(b))
    return msg_id, b


s = socket.create_connection((host, port))
send(s, 102, {"username": "memprobe", "password": "secret1", "email": "m@x"})
recv(s)
send(s, 104, {"username": "memprobe", "password": "secret1"})
token = json.loads(recv(s)[1])["data"]["token"]
time.sleep(0.5)
base = rss()
conns = []
for _ in range(n):
    c = socket.create_connection((host, port))
    send(c, 1, b"ping")
    recv(c)
    conns.append(c)
time.sleep(1)
print(f"idle connections:      {(rss() - base) / n:7.0f} bytes each ({n})")
for c in conns:
    send(c, 104, {"token": token})
    recv(c)
time.sleep(2)
print(f"logged-in connections: {(rss() - base) / n:7.0f} bytes each ({n})")
