//! The cart as the rest of cartbus sees it: parsed, normalised and impossible to hold in an
//! invalid state. [`Cart::parse`] is the only way to make one from outside input.

use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub const MAX_LINES: usize = 500;
pub const MAX_QUANTITY: i64 = 10_000;

/// The storefront's id for a cart; also the idempotency key and the queue message-id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct CartId(Uuid);

impl CartId {
    pub fn parse(s: &str) -> Result<CartId, &'static str> {
        let id = Uuid::try_parse(s.trim()).map_err(|_| "must be a UUID")?;
        if id.is_nil() {
            return Err("must not be the nil UUID");
        }
        Ok(CartId(id))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for CartId {
    fn from(id: Uuid) -> Self {
        CartId(id)
    }
}

impl std::fmt::Display for CartId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An amount in the currency's minor units (cents), never negative.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Money(i64);

impl Money {
    pub fn new(minor_units: i64) -> Option<Money> {
        (minor_units >= 0).then_some(Money(minor_units))
    }

    pub fn minor_units(self) -> i64 {
        self.0
    }

    /// `quantity × self`, or `None` when it does not fit in 64 bits.
    pub fn times(self, quantity: Quantity) -> Option<Money> {
        self.0.checked_mul(i64::from(quantity.0)).map(Money)
    }

    pub fn checked_add(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).map(Money)
    }
}

/// How many of one item: 1..=10,000.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Quantity(u32);

impl Quantity {
    pub fn new(n: i64) -> Option<Quantity> {
        if (1..=MAX_QUANTITY).contains(&n) {
            u32::try_from(n).ok().map(Quantity)
        } else {
            None
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// ISO 3166-1 alpha-2, upper case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CountryCode(String);

impl CountryCode {
    pub fn parse(s: &str) -> Option<CountryCode> {
        let s = s.trim();
        if s.len() != 2 {
            return None;
        }
        isocountry::CountryCode::for_alpha2_caseless(s)
            .ok()
            .map(|c| CountryCode(c.alpha2().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// ISO 4217, upper case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct CurrencyCode(String);

impl CurrencyCode {
    pub fn parse(s: &str) -> Option<CurrencyCode> {
        let upper = s.trim().to_ascii_uppercase();
        iso_currency::Currency::from_code(&upper).map(|c| CurrencyCode(c.code().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A syntactically valid e-mail address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(s: &str) -> Option<Email> {
        let s = s.trim();
        // RFC 5322 lets a quoted local part hold a tab, and email_address takes it; like
        // every other string of a cart, an address holds no control characters.
        (s.len() <= Self::MAX_LEN
            && !s.chars().any(char::is_control)
            && email_address::EmailAddress::is_valid(s)
            && s.contains('@'))
        .then(|| Email(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Customer {
    pub id: Option<String>,
    pub name: String,
    pub email: Email,
    pub phone: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Address {
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub region: Option<String>,
    pub postal_code: Option<String>,
    pub country: CountryCode,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Line {
    pub sku: String,
    pub name: String,
    pub quantity: Quantity,
    pub unit_price: Money,
}

/// A validated cart. Field names and order are the wire format (DESIGN §3 and §4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cart {
    pub cart_id: CartId,
    pub customer: Customer,
    pub shipping_address: Address,
    pub currency: CurrencyCode,
    pub lines: Vec<Line>,
    pub total: Money,
}

impl Cart {
    /// SHA-256 of the normalised cart: two submissions of the same cart hash the same even
    /// when whitespace, key order or letter case of codes differ.
    pub fn payload_hash(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a cart always serialises");
        hex::encode(Sha256::digest(canonical))
    }
}
