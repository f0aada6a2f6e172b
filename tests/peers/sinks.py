#!/usr/bin/env python3
"""Real peers for Talon's automation tests, bound to 127.0.0.1.

  sinks.py smtp DIR   an SMTP server (aiosmtpd) that stores every message it accepts as
                      DIR/<n>.eml; a recipient whose local part starts with "refuse" is
                      refused with 451 (a transient refusal, so the sender retries).
  sinks.py smtp-starttls DIR CERT KEY
                      the SMTP server offering STARTTLS with that certificate and key,
                      and refusing mail until the client has started TLS.
  sinks.py http DIR   an HTTP server that stores every request as DIR/<n>.json
                      ({method, path, headers with lowercase names, body}) and answers 200 {"ok": true}.

  sinks.py https DIR CERT KEY
                      the HTTP server over TLS with that certificate and key.
  sinks.py parse FILE  prints a stored message as JSON: its headers and every MIME part
                      (content type, filename, decoded text) as Python's email parser
                      reads them.

Each server prints "port N" on stdout once it listens, then runs until it is killed. Files are
written under a temporary name and renamed, so a reader never sees half a file.
"""
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

counter = 0
lock = threading.Lock()


def store(directory, suffix, data):
    global counter
    with lock:
        counter += 1
        n = counter
    tmp = os.path.join(directory, f".{n}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, os.path.join(directory, f"{n}.{suffix}"))


def smtp(directory, tls=None):
    from aiosmtpd.controller import Controller

    class Handler:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            if address.split("@")[0].lower().startswith("refuse"):
                return "451 4.7.1 Talon test sink refuses this recipient, try later"
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):
            store(directory, "eml", envelope.original_content or envelope.content)
            return "250 Message accepted"

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    kwargs = {}
    if tls:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls[0], tls[1])
        kwargs = {"tls_context": context, "require_starttls": True}
    controller = Controller(Handler(), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print(f"port {port}", flush=True)
    while True:
        time.sleep(3600)


def http(directory, tls=None):
    class Handler(BaseHTTPRequestHandler):
        def handle_any(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace")
            record = {
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body,
            }
            store(directory, "json", json.dumps(record).encode())
            answer = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls[0], tls[1])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


def parse(path):
    import email
    from email import policy

    with open(path, "rb") as f:
        msg = email.message_from_binary_file(f, policy=policy.default)
    parts = []
    for part in msg.walk():
        entry = {"type": part.get_content_type(), "filename": part.get_filename()}
        if not part.is_multipart():
            payload = part.get_payload(decode=True) or b""
            entry["text"] = payload.decode("utf-8", "replace")
        parts.append(entry)
    print(json.dumps({
        "subject": str(msg["Subject"] or ""),
        "from": str(msg["From"] or ""),
        "to": str(msg["To"] or ""),
        "mime_version": str(msg["MIME-Version"] or ""),
        "defects": [str(d) for p in msg.walk() for d in p.defects],
        "parts": parts,
    }))


if __name__ == "__main__":
    if sys.argv[1] == "parse":
        parse(sys.argv[2])
        sys.exit(0)
    kind, directory = sys.argv[1], sys.argv[2]
    os.makedirs(directory, exist_ok=True)
    if kind == "https":
        http(directory, tls=(sys.argv[3], sys.argv[4]))
    elif kind == "smtp-starttls":
        smtp(directory, tls=(sys.argv[3], sys.argv[4]))
    else:
        {"smtp": smtp, "http": http}[kind](directory)
