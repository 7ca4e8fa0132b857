"""edgewatch: real-time anomaly service for factory equipment. The command line
(``edgewatch ...``) lives here and wires ``connectors``, ``stream`` and
``detectors`` together."""

__version__ = "0.1.0"
