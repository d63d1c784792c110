"""Plain helpers shared by the test modules.

conftest.py holds the fixtures and the Daemon/Conn classes; these modules hold the
rest, one concern each: `records` reads what the test jobs wrote, `client` asks a
daemon the usual questions, `net` and `smtp` are loopback peers, `mariadb` a private
server, `outage` the probe that talks to a daemon while its database is down.
"""
