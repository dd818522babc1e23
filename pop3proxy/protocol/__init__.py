"""The sans-IO POP3 core.

Rule: nothing in this package does I/O or imports anything outside the
standard library (a test enforces it). Bytes go in, actions come out; the
gevent shell in ``pop3proxy.net`` executes the actions. That keeps the part
of the proxy that judges untrusted input testable byte by byte, without a
socket, and keeps the I/O shell thin.
"""
