"""Integration-test harness: real redis-server, real Dovecot, real TLS, plain Python.

The harness deliberately uses subprocess and stdlib sockets only (no gevent), so
that it behaves the same whether or not the code under test monkey-patches.
"""
