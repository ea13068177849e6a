"""sesmon: streaming safety monitoring for special equipment (elevators, boilers).

This package holds what every stage shares: settings, the fleet registry, the message
schemas, Kafka/MQTT plumbing, the embedded servers and the ``sesmon`` command line.
"""

__version__ = "0.1.0"
