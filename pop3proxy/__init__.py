"""pop3proxy: a multi-tenant POP3 proxy.

Clients speak POP3 over TLS to the proxy; the proxy finds the user's tenant,
logs in to that tenant's upstream POP3 server and relays the session.
"""

__version__ = "0.1.0"
