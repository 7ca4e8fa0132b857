"""Modbus TCP: the connector, its request planner and register codec, and a
simulated device for tests, demos and benchmarks. See README.md here.

    codec      register contents <-> engineering values (types, byte orders, bit fields)
    plan       tags -> coalesced read requests per unit id, table and poll interval
    client     ModbusConnector: polls one connection, hands samples and events to a sink
    simserver  SimModbusServer: a real pymodbus server laid out by the configuration
    bench      bench_modbus: many devices, one connector each, figures out
"""
