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

/// What an identifier must look like, in every place the API or a queue message takes one.
pub const UUID_FORM: &str = "must be a UUID in its hyphenated form, 8-4-4-4-12 hex digits (e.g. 6f1c0c1e-5d7b-4a53-9b1a-2f6a3d9f0c11)";

/// A UUID as the API takes it: the hyphenated form of RFC 9562, in either letter case
/// (the same id whatever the case), surrounding whitespace ignored. The braced, `urn:uuid:`
/// and bare-hex forms are refused, so that one id has one spelling in every log, URL and
/// message, and ids are compared as UUIDs, never as text.
pub fn parse_uuid(text: &str) -> Result<Uuid, &'static str> {
    let text = text.trim();
    if text.len() != 36 {
        return Err(UUID_FORM);
    }
    Uuid::try_parse(text).map_err(|_| UUID_FORM)
}

impl CartId {
    pub fn parse(s: &str) -> Result<CartId, &'static str> {
        let id = parse_uuid(s)?;
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
        // Counted in characters, as every limit of the API and JSON Schema's maxLength are.
        (s.chars().count() <= Self::MAX_LEN
            && !s.chars().any(char::is_control)
            && email_address::EmailAddress::is_valid(s)
            && s.contains('@'))
        .then(|| Email(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// The schemas below document the body of `POST /v1/checkouts`, the JSON that
// `Cart::parse` reads (its limits restated, as JSON Schema can say them); they keep the
// names the API has always published them under.

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = CustomerRequest)]
pub struct Customer {
    #[schema(max_length = 100, example = "cust-42")]
    pub id: Option<String>,
    #[schema(min_length = 1, max_length = 200, example = "Ada Lovelace")]
    pub name: String,
    #[schema(value_type = String, max_length = 254, example = "ada@example.com")]
    pub email: Email,
    #[schema(max_length = 32, example = "+44 20 7946 0000")]
    pub phone: Option<String>,
}

// The address a cart ships to. An order shows its own as `order::AddressView`, the text
// as stored. (Not a doc comment, which would become the published schema's description.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = AddressRequest)]
pub struct Address {
    #[schema(min_length = 1, max_length = 200, example = "12 Analytical St")]
    pub line1: String,
    #[schema(max_length = 200)]
    pub line2: Option<String>,
    #[schema(min_length = 1, max_length = 100, example = "London")]
    pub city: String,
    #[schema(max_length = 100, example = "LND")]
    pub region: Option<String>,
    #[schema(max_length = 20, example = "EC1A 1AA")]
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2 country code.
    #[schema(value_type = String, example = "GB")]
    pub country: CountryCode,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = LineRequest)]
pub struct Line {
    #[schema(min_length = 1, max_length = 64, example = "BOOK-001")]
    pub sku: String,
    #[schema(min_length = 1, max_length = 200, example = "Notes on the Engine")]
    pub name: String,
    #[schema(value_type = i64, minimum = 1, maximum = 10000, example = 2)]
    pub quantity: Quantity,
    /// Minor units.
    #[schema(value_type = i64, minimum = 0, example = 1999)]
    pub unit_price: Money,
}

/// A validated cart. Field names and order are the wire format (DESIGN §3 and §4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(
    as = CheckoutRequest,
    description = "The request body of `POST /v1/checkouts`. Every rule it breaks is reported \
                   at once, each bad field by a JSON pointer."
)]
pub struct Cart {
    /// UUID chosen by the storefront; the idempotency key. Its hyphenated form
    /// (8-4-4-4-12 hex digits) in either case, answered in lower case; braces, `urn:uuid:`
    /// and bare hex are refused.
    #[schema(
        value_type = uuid::Uuid,
        pattern = "^\\s*[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\\s*$",
        example = "6f1c0c1e-5d7b-4a53-9b1a-2f6a3d9f0c11"
    )]
    pub cart_id: CartId,
    pub customer: Customer,
    pub shipping_address: Address,
    /// ISO 4217 currency code.
    #[schema(value_type = String, example = "GBP")]
    pub currency: CurrencyCode,
    /// 1 to 500 lines.
    #[schema(min_items = 1, max_items = 500)]
    pub lines: Vec<Line>,
    /// Σ quantity × unit_price, in minor units.
    #[schema(value_type = i64, example = 3998, minimum = 0)]
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
