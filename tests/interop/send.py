"""Sends one cart message with python-qpid-proton, the way a producer that is not cartbus
would: durable, message-id = cart_id, JSON content type, typed application properties,
the envelope as a data section.

usage: send.py URL ADDRESS MESSAGE_ID < envelope.json
"""
import sys

from proton import Message, int32
from proton.utils import BlockingConnection


def main() -> None:
    url, address, message_id = sys.argv[1], sys.argv[2], sys.argv[3]
    body = sys.stdin.buffer.read()
    message = Message(
        id=message_id,
        content_type="application/json",
        durable=True,
        properties={"schema": int32(1)},
        body=body,
        inferred=True,  # bytes as a data section, not an amqp-value
    )
    connection = BlockingConnection(url, timeout=20)
    try:
        sender = connection.create_sender(address)
        sender.send(message, timeout=20)  # waits for the broker's disposition
    finally:
        connection.close()


if __name__ == "__main__":
    main()
