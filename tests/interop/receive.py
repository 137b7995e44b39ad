"""Receives one message with python-qpid-proton (an AMQP 1.0 client independent of
cartbus's fe2o3-amqp) and prints what it saw on the wire as JSON.

usage: receive.py URL ADDRESS
"""
import json
import sys

from proton.utils import BlockingConnection


def main() -> None:
    url, address = sys.argv[1], sys.argv[2]
    connection = BlockingConnection(url, timeout=20)
    try:
        receiver = connection.create_receiver(address, credit=1)
        message = receiver.receive(timeout=20)
        body = message.body
        if isinstance(body, memoryview):
            body = body.tobytes()
        # proton sets `inferred` when the body came as data (or sequence) sections
        # rather than as one amqp-value
        if message.inferred and isinstance(body, bytes):
            body_type = "data"
        else:
            body_type = "amqp-value:" + type(body).__name__
        seen = {
            "message_id": message.id,
            "content_type": message.content_type,
            "durable": message.durable,
            "body_type": body_type,
            "body": body.decode("utf-8") if isinstance(body, bytes) else None,
            # (value, AMQP type as proton decoded it) for each application property
            "properties": {
                key: [value, type(value).__name__]
                for key, value in (message.properties or {}).items()
            },
        }
        receiver.accept()
    finally:
        connection.close()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
