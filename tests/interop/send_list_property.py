"""Sends a message whose application property holds a list. AMQP 1.0 allows only simple
values there, but RabbitMQ carries AMQP 0-9-1 array headers over as such; a consumer must
dead-letter it rather than choke on it.

usage: send_list_property.py URL ADDRESS MESSAGE_ID
"""
import sys

from proton import Message
from proton.utils import BlockingConnection


def main() -> None:
    url, address, message_id = sys.argv[1], sys.argv[2], sys.argv[3]
    message = Message(
        id=message_id,
        content_type="application/json",
        durable=True,
        properties={"tags": ["a", "b"]},
        body=b'{"schema": 1}',
        inferred=True,
    )
    connection = BlockingConnection(url, timeout=20)
    try:
        connection.create_sender(address).send(message, timeout=20)
    finally:
        connection.close()


if __name__ == "__main__":
    main()
