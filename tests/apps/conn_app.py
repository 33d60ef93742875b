"""WSGI app whose workers open and keep outgoing connections, like a DB pool would.

/connect?port=P       open a TCP connection to 127.0.0.1:P and keep it
/connect?unix=PATH    open a unix stream connection to PATH and keep it
/count                how many this worker holds
"""

import os
import socket
from urllib.parse import parse_qs

HELD: list[socket.socket] = []


def app(environ, start_response):
    q = parse_qs(environ.get("QUERY_STRING", ""))
    path = environ.get("PATH_INFO", "/")
    if path == "/connect" and len(HELD) < 100:
        if "port" in q:
            s = socket.create_connection(("127.0.0.1", int(q["port"][0])), timeout=5)
        else:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(q["unix"][0])
        HELD.append(s)
    body = f"{len(HELD)} pid={os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
