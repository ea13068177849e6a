"""One way to make an MQTT client: every stage honours the same URL, credentials and TLS.

Why: each stage used to build its own paho client from host and port only, so
``mqtts://user:pass@host`` lost its user, password and TLS on the way. Everything that
connects to the broker goes through :func:`make_client` and :func:`connect_async`.
"""

from __future__ import annotations

import ssl
from typing import Any

import paho.mqtt.client as mqtt

from sesmon.runtime.settings import MqttEndpoint, Settings


def make_client(
    settings: Settings,
    client_id: str,
    *,
    clean_session: bool = True,
    manual_ack: bool = False,
    endpoint: MqttEndpoint | None = None,
    **kwargs: Any,
) -> mqtt.Client:
    """A paho 2.x client (MQTT 3.1.1) with this stage's credentials and TLS applied."""
    endpoint = endpoint or settings.mqtt_endpoint
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
        manual_ack=manual_ack,
        **kwargs,
    )
    if endpoint.username:
        client.username_pw_set(endpoint.username, endpoint.password)
    if endpoint.tls or settings.mqtt_tls_ca:
        client.tls_set(
            ca_certs=str(settings.mqtt_tls_ca) if settings.mqtt_tls_ca else None,
            certfile=str(settings.mqtt_tls_cert) if settings.mqtt_tls_cert else None,
            keyfile=str(settings.mqtt_tls_key) if settings.mqtt_tls_key else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        if settings.mqtt_tls_insecure:
            client.tls_insecure_set(True)
    return client


def connect_async(client: mqtt.Client, settings: Settings, endpoint: MqttEndpoint | None = None) -> None:
    """Start connecting in paho's own thread; paho reconnects by itself after that."""
    endpoint = endpoint or settings.mqtt_endpoint
    client.connect_async(endpoint.host, endpoint.port, keepalive=settings.mqtt_keepalive_s)
    client.loop_start()
