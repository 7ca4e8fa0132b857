"""OPC UA: the connector (subscriptions, reconnect, security), its certificate tools,
a simulated server and a benchmark. README.md in this folder is the integrator's guide.

The modules are imported by name (``connectors.opcua.client``, ``.security``,
``.simserver``, ``.bench``); this file imports nothing, so that reading the
configuration never pulls in asyncua.
"""
