//! The domain: the cart (parsed from JSON into types that cannot be invalid), money,
//! orders and payments as the API shows them, the messages on the queues, and the reasons
//! a message or checkout is turned away. No I/O: everything here is plain data and pure
//! functions, used by every layer above.

mod cart;
pub mod cart_message;
pub mod drain;
pub mod event;
pub mod message;
pub mod order;
mod parse;
pub mod partner;
pub mod payment;
mod reason;
pub mod resubmit;
pub mod webhook;

pub use cart::{
    Address, Cart, CartId, CountryCode, CurrencyCode, Customer, Email, Line, MAX_LINES,
    MAX_QUANTITY, Money, Quantity, UUID_FORM, parse_uuid,
};
pub use parse::FieldError;
pub use reason::Reason;
