//! The cart: parsed from JSON into types that cannot be invalid, encoded as a queue
//! message, and taken in by [`intake`].

mod cart;
pub mod intake;
pub mod message;
mod parse;

pub use cart::{
    Address, Cart, CartId, CountryCode, CurrencyCode, Customer, Email, Line, MAX_LINES,
    MAX_QUANTITY, Money, Quantity,
};
pub use parse::FieldError;
