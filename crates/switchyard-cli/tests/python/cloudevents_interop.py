"""A plain client of each broker, for the CloudEvents interop test (tests/interop.rs).

    python3 cloudevents_interop.py PROTO send TOPIC   # publishes one binary-mode CloudEvent
    python3 cloudevents_interop.py PROTO recv TOPIC   # prints "ready", then the first message
                                                      # as JSON {"attributes": ..., "data": ...}

PROTO is amqp (pika), mqtt (paho-mqtt, MQTT 5), kafka (kafka-python) or nats (nats-py). Each
follows its CloudEvents protocol binding: AMQP `cloudEvents:` headers, MQTT 5 user properties,
Kafka `ce_` headers, NATS `ce-` headers; the content type in the protocol's own content-type
slot.
"""
import json
import sys
import time

EVENT = {
    "id": "plain-client-1",
    "type": "com.example.order.created",
    "source": "/plain-client",
    "specversion": "1.0",
}
DATA = json.dumps({"order": 7}).encode()


def out(obj):
    print(json.dumps(obj), flush=True)


def amqp(mode, topic):
    import pika

    conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", 5672))
    ch = conn.channel()
    ch.exchange_declare("sy.events", exchange_type="topic", durable=True)
    if mode == "send":
        ch.confirm_delivery()
        headers = {f"cloudEvents:{k}": v for k, v in EVENT.items()}
        ch.basic_publish("sy.events", topic, DATA,
                         pika.BasicProperties(content_type="application/json", headers=headers,
                                              delivery_mode=2))
        conn.close()
        return
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "sy.events", routing_key=topic)
    out("ready")
    for method, props, body in ch.consume(q, inactivity_timeout=30):
        if method is None:
            sys.exit("amqp: nothing arrived in 30 s")
        attrs = {k[len("cloudEvents:"):]: v for k, v in (props.headers or {}).items()
                 if k.startswith("cloudEvents:")}
        attrs["datacontenttype"] = props.content_type
        attrs["message_id"] = props.message_id
        out({"attributes": attrs, "data": json.loads(body)})
        ch.basic_ack(method.delivery_tag)
        break
    conn.close()


def mqtt(mode, topic):
    import paho.mqtt.client as paho
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    got = []
    if mode == "recv":
        def on_connect(client, userdata, flags, rc, props):
            client.subscribe(topic, qos=1)

        def on_subscribe(client, userdata, mid, rcs, props):
            out("ready")

        def on_message(client, userdata, msg):
            p = msg.properties
            attrs = dict(getattr(p, "UserProperty", []) or [])
            attrs["datacontenttype"] = getattr(p, "ContentType", None)
            got.append({"attributes": attrs, "data": json.loads(msg.payload)})

        c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.connect("127.0.0.1", 1883)
    c.loop_start()
    if mode == "send":
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = list(EVENT.items())
        props.ContentType = "application/json"
        c.publish(topic, DATA, qos=1, properties=props).wait_for_publish(10)
    else:
        deadline = time.time() + 30
        while not got and time.time() < deadline:
            time.sleep(0.05)
        if not got:
            sys.exit("mqtt: nothing arrived in 30 s")
        out(got[0])
    c.loop_stop()
    c.disconnect()


def kafka(mode, topic):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    if mode == "send":
        p = KafkaProducer(bootstrap_servers="127.0.0.1:9092", acks="all")
        headers = [(f"ce_{k}", v.encode()) for k, v in EVENT.items()]
        headers.append(("content-type", b"application/json"))
        p.send(topic, DATA, headers=headers).get(timeout=30)
        p.close()
        return
    c = KafkaConsumer(bootstrap_servers="127.0.0.1:9092", enable_auto_commit=False)
    deadline = time.time() + 30
    parts = None
    while not parts and time.time() < deadline:
        parts = c.partitions_for_topic(topic)
        if not parts:
            time.sleep(0.2)
    tps = [TopicPartition(topic, p) for p in sorted(parts or [])]
    c.assign(tps)
    c.seek_to_end(*tps)
    for tp in tps:
        c.position(tp)  # resolve the end now, before the other side publishes
    out("ready")
    while time.time() < deadline + 30:
        for records in c.poll(timeout_ms=500).values():
            for r in records:
                attrs = {k[3:]: v.decode() for k, v in r.headers if k.startswith("ce_")}
                attrs["datacontenttype"] = dict(r.headers).get("content-type", b"").decode()
                out({"attributes": attrs, "data": json.loads(r.value)})
                c.close()
                return
    sys.exit("kafka: nothing arrived")


def nats_(mode, topic):
    import asyncio

    import nats

    async def main():
        nc = await nats.connect("nats://127.0.0.1:4222")
        if mode == "send":
            # A JetStream publish, acknowledged once the stream (made by our subscriber) has it.
            headers = {f"ce-{k}": v for k, v in EVENT.items()}
            headers["content-type"] = "application/json"
            await nc.jetstream().publish(topic, DATA, headers=headers)
            await nc.close()
            return
        got = asyncio.get_running_loop().create_future()

        async def on_message(msg):
            if not got.done():
                got.set_result(msg)

        await nc.subscribe(topic, cb=on_message)
        await nc.flush()
        out("ready")
        try:
            msg = await asyncio.wait_for(got, 30)
        except asyncio.TimeoutError:
            sys.exit("nats: nothing arrived in 30 s")
        h = msg.headers or {}
        attrs = {k[3:]: v for k, v in h.items() if k.lower().startswith("ce-")}
        attrs["datacontenttype"] = h.get("content-type")
        out({"attributes": attrs, "data": json.loads(msg.data)})
        await nc.close()

    asyncio.run(main())


if __name__ == "__main__":
    proto, mode, topic = sys.argv[1:4]
    {"amqp": amqp, "mqtt": mqtt, "kafka": kafka, "nats": nats_}[proto](mode, topic)
