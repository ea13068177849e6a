"""The runtime layer: what a running stage needs besides the contract.

Typed settings (``SESMON_`` variables), Kafka and MQTT clients, the retry policy, stage
health, the embedded servers, broker credentials and the supervisor. It may import the
contract layer, never a stage or the application.
"""
