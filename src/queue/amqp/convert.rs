//! cartbus messages ↔ AMQP 1.0 messages (DESIGN §4).

use bytes::Bytes;
use fe2o3_amqp::types::messaging::{
    ApplicationProperties, Body, Data, Header, Message as AmqpMessage, MessageId,
    Properties as AmqpProperties,
};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue, Timestamp, Value};

use crate::queue::{Message, Properties, Property};

/// A durable message: without the durable header a broker restart loses it.
pub fn to_amqp(message: Message) -> AmqpMessage<Data> {
    // creation-time: RabbitMQ reports the first waiting message's as the queue's
    // `head_message_timestamp`, the backlog's "oldest waiting" on a broker.
    let mut header = AmqpProperties::builder()
        .message_id(MessageId::String(message.message_id))
        .content_type(message.content_type)
        .creation_time(Timestamp::from_milliseconds(
            chrono::Utc::now().timestamp_millis(),
        ));
    if let Some(id) = message.correlation_id {
        header = header.correlation_id(MessageId::String(id));
    }
    if let Some(address) = message.reply_to {
        header = header.reply_to(address);
    }
    if let Some(subject) = message.subject {
        header = header.subject(subject);
    }
    let mut properties = ApplicationProperties::builder();
    for (key, value) in message.properties {
        let value = match value {
            Property::Bool(v) => SimpleValue::Bool(v),
            Property::Int(v) => SimpleValue::Int(v),
            Property::Long(v) => SimpleValue::Long(v),
            Property::String(v) => SimpleValue::String(v),
        };
        properties = properties.insert(key, value);
    }
    AmqpMessage::builder()
        .header(Header {
            durable: true,
            ..Default::default()
        })
        .properties(header.build())
        .application_properties(properties.build())
        .data(Binary::from(message.body.to_vec()))
        .build()
}

/// Reads whatever a producer sent. Fields cartbus does not understand become empty or are
/// skipped; the consumer then dead-letters the message as invalid rather than dropping it.
pub fn from_amqp(message: AmqpMessage<Body<Value>>) -> Message {
    let header = message.properties.unwrap_or_default();
    let mut properties = Properties::new();
    if let Some(app) = message.application_properties {
        for (key, value) in app.0 {
            let value = match value {
                SimpleValue::Bool(v) => Property::Bool(v),
                SimpleValue::Int(v) => Property::Int(v),
                SimpleValue::Long(v) => Property::Long(v),
                SimpleValue::String(v) => Property::String(v),
                SimpleValue::Symbol(v) => Property::String(v.0),
                SimpleValue::Short(v) => Property::Int(i32::from(v)),
                SimpleValue::Byte(v) => Property::Int(i32::from(v)),
                SimpleValue::Ushort(v) => Property::Int(i32::from(v)),
                SimpleValue::Ubyte(v) => Property::Int(i32::from(v)),
                SimpleValue::Uint(v) => Property::Long(i64::from(v)),
                _ => continue,
            };
            properties.insert(key, value);
        }
    }
    Message {
        message_id: header.message_id.map(message_id_text).unwrap_or_default(),
        content_type: header.content_type.map(|s| s.0).unwrap_or_default(),
        correlation_id: header.correlation_id.map(message_id_text),
        reply_to: header.reply_to,
        subject: header.subject,
        properties,
        body: body_bytes(message.body),
    }
}

fn message_id_text(id: MessageId) -> String {
    match id {
        MessageId::String(s) => s,
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => uuid::Uuid::from_bytes(u.into_inner()).to_string(),
        MessageId::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
    }
}

/// Data sections are the bytes; an AmqpValue of binary or string (what some clients send
/// by default) is taken as the bytes too. Anything else has no cart in it.
fn body_bytes(body: Body<Value>) -> Bytes {
    match body {
        Body::Data(sections) => {
            let mut bytes = Vec::new();
            for Data(chunk) in sections {
                bytes.extend_from_slice(&chunk);
            }
            Bytes::from(bytes)
        }
        Body::Value(value) => match value.0 {
            Value::Binary(b) => Bytes::from(b.into_vec()),
            Value::String(s) => Bytes::from(s),
            _ => Bytes::new(),
        },
        _ => Bytes::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_with_its_typed_properties() {
        let mut properties = Properties::new();
        properties.insert("schema".into(), Property::Int(1));
        properties.insert("total_minor".into(), Property::Long(12_345));
        properties.insert("currency".into(), Property::String("EUR".into()));
        properties.insert("gift".into(), Property::Bool(false));
        let message = Message {
            message_id: "6f7c2f7e-0000-4000-8000-000000000001".into(),
            content_type: "application/json".into(),
            correlation_id: Some("order-1".into()),
            reply_to: Some("/queue/order-status".into()),
            subject: Some("new-order".into()),
            properties,
            body: Bytes::from_static(br#"{"cart":1}"#),
        };
        let amqp = to_amqp(message.clone());
        assert_eq!(amqp.header.as_ref().map(|h| h.durable), Some(true));
        let received = AmqpMessage {
            header: amqp.header,
            delivery_annotations: None,
            message_annotations: None,
            properties: amqp.properties,
            application_properties: amqp.application_properties,
            body: Body::Data(vec![amqp.body].into()),
            footer: None,
        };
        assert_eq!(from_amqp(received), message);
    }
}
