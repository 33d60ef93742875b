"""A WSGI app that holds 200 MiB of written (so resident) memory from import: loaded with
--preload, its workers share those pages with the master copy-on-write, so each worker's
RSS is about 200 MiB while the memory only it maps (USS) is small."""

BALLAST = bytearray(b"\x01") * (200 * 1024 * 1024)


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"%d\n" % len(BALLAST)]
