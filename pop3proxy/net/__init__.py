"""The gevent I/O shell: sockets, TLS and timeouts; no protocol decisions."""
