"""The edge side: from OPC UA servers and Modbus devices into Kafka.

    opcua/      OPC UA client (subscriptions, reconnect, security) and a simulator server
    modbus/     Modbus TCP / RTU-over-TCP poller (register map, byte orders) and a simulator server
    base.py     what connectors hand on: samples, connector events, device health
    batcher.py  samples -> per-asset reading batches -> spool
    spool.py    the durable, bounded store-and-forward spool on disk
    forwarder.py  spool -> Kafka, in order, backfill marked as replayed
    runner.py   `edgewatch connect`: all of the above for one plant file
    simulator/  the simulated plant (physics, faults, ground truth) and `edgewatch simulate`

Imports only the light wire-schema modules of ``stream`` (wire, topics, config),
never the worker.
"""
