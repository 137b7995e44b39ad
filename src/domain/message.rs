//! A message as every queue carries it: id, content type, AMQP's reply fields, typed
//! application properties and the body bytes.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A typed application property, as AMQP 1.0 carries them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Property {
    Bool(bool),
    Int(i32),
    Long(i64),
    String(String),
}

pub type Properties = BTreeMap<String, Property>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub message_id: String,
    pub content_type: String,
    /// AMQP `correlation-id`: what a reply refers to (the order id of a new-order).
    pub correlation_id: Option<String>,
    /// AMQP `reply-to`: the address to answer on.
    pub reply_to: Option<String>,
    /// AMQP `subject`: the kind of message (`new-order`).
    pub subject: Option<String>,
    pub properties: Properties,
    pub body: Bytes,
}
