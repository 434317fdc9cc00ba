import threading

import paho.mqtt.client as mqtt

from tests.support.services import Mosquitto


def test_mosquitto_round_trip(mosquitto_broker: Mosquitto) -> None:
    got = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = lambda _c, _u, msg: got.set() if msg.payload == b"hi" else None
    c.connect(mosquitto_broker.host, mosquitto_broker.port)
    c.subscribe("t/#", qos=1)
    c.loop_start()
    try:
        import time
        end = time.monotonic() + 10
        while not got.is_set() and time.monotonic() < end:
            c.publish("t/x", b"hi", qos=1)
            got.wait(0.2)
        assert got.is_set()
    finally:
        c.loop_stop()
        c.disconnect()
