"""The edge side: protocol clients, the plant simulator, the Kafka publisher.

Imports only the light wire-schema modules of ``stream`` (wire, topics, config),
never the worker.
"""
