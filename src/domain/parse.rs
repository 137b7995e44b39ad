//! JSON → [`Cart`], collecting every problem with the JSON pointer (RFC 6901) of the field
//! it is about. The same parser reads carts from HTTP bodies and from queue messages.

use serde::Serialize;
use serde_json::{Map, Value};

use super::cart::{
    Address, Cart, CartId, CountryCode, CurrencyCode, Customer, Email, Line, MAX_LINES,
    MAX_QUANTITY, Money, Quantity,
};

/// One bad field: where it is and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON pointer into the request body, e.g. `/lines/0/quantity`.
    #[schema(example = "/lines/0/quantity")]
    pub pointer: String,
    #[schema(example = "must be an integer between 1 and 10000")]
    pub detail: String,
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, pointer: impl Into<String>, detail: impl Into<String>) {
        self.0.push(FieldError {
            pointer: pointer.into(),
            detail: detail.into(),
        });
    }
}

/// Appends `key` to `pointer`, escaping it per RFC 6901.
fn child(pointer: &str, key: &str) -> String {
    format!("{pointer}/{}", key.replace('~', "~0").replace('/', "~1"))
}

/// Bounds for a text field, counted in characters after trimming.
struct Text {
    max: usize,
}

const ID: Text = Text { max: 100 };
const NAME: Text = Text { max: 200 };
const PHONE: Text = Text { max: 32 };
const ADDRESS_LINE: Text = Text { max: 200 };
const CITY: Text = Text { max: 100 };
const REGION: Text = Text { max: 100 };
const POSTAL_CODE: Text = Text { max: 20 };
const SKU: Text = Text { max: 64 };

/// The fields of one JSON object, read with the object's pointer at hand.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    pointer: String,
}

impl<'a> Fields<'a> {
    fn of(value: &'a Value, pointer: String, known: &[&str], errors: &mut Errors) -> Option<Self> {
        let Value::Object(map) = value else {
            errors.push(pointer, "must be an object");
            return None;
        };
        for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
            errors.push(child(&pointer, key), "is not a known field");
        }
        Some(Fields { map, pointer })
    }

    fn pointer(&self, key: &str) -> String {
        child(&self.pointer, key)
    }

    /// The value of `key`, treating `null` like a missing key.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn required<T>(
        &self,
        key: &str,
        errors: &mut Errors,
        read: impl FnOnce(&'a Value, String, &mut Errors) -> Option<T>,
    ) -> Option<T> {
        match self.get(key) {
            Some(value) => read(value, self.pointer(key), errors),
            None => {
                errors.push(self.pointer(key), "is required");
                None
            }
        }
    }

    fn required_text(&self, key: &str, rule: &Text, errors: &mut Errors) -> Option<String> {
        let text = self.required(key, errors, |v, p, e| text(v, p, rule, e))?;
        if text.is_none() {
            errors.push(self.pointer(key), "must not be empty");
        }
        text
    }

    /// `Ok(None)` when absent, null or blank; `Err(())` when present but invalid.
    fn optional_text(
        &self,
        key: &str,
        rule: &Text,
        errors: &mut Errors,
    ) -> Result<Option<String>, ()> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => text(v, self.pointer(key), rule, errors).ok_or(()),
        }
    }
}

/// A trimmed, bounded string without control characters; `Some(None)` when blank.
fn text(
    value: &Value,
    pointer: String,
    rule: &Text,
    errors: &mut Errors,
) -> Option<Option<String>> {
    let Some(s) = value.as_str() else {
        errors.push(pointer, "must be a string");
        return None;
    };
    let s = s.trim();
    if s.chars().any(char::is_control) {
        errors.push(pointer, "must not contain control characters");
        return None;
    }
    if s.chars().count() > rule.max {
        errors.push(pointer, format!("must be at most {} characters", rule.max));
        return None;
    }
    Some((!s.is_empty()).then(|| s.to_string()))
}

fn integer(value: &Value, pointer: String, min: i64, max: i64, errors: &mut Errors) -> Option<i64> {
    match value.as_i64() {
        Some(n) if (min..=max).contains(&n) => Some(n),
        _ if !value.is_number() => {
            errors.push(pointer, "must be an integer");
            None
        }
        _ => {
            errors.push(
                pointer,
                format!("must be an integer between {min} and {max}"),
            );
            None
        }
    }
}

fn code<T>(
    value: &Value,
    pointer: String,
    parse: fn(&str) -> Option<T>,
    what: &str,
    errors: &mut Errors,
) -> Option<T> {
    match value.as_str() {
        Some(s) => parse(s).or_else(|| {
            errors.push(pointer, format!("must be {what}"));
            None
        }),
        None => {
            errors.push(pointer, "must be a string");
            None
        }
    }
}

impl Cart {
    /// Parses and validates a cart, reporting every bad field at once.
    pub fn parse(value: &Value) -> Result<Cart, Vec<FieldError>> {
        let mut errors = Errors::default();
        let cart = parse_cart(value, &mut errors);
        match cart {
            Some(cart) if errors.0.is_empty() => Ok(cart),
            _ => Err(errors.0),
        }
    }
}

fn parse_cart(value: &Value, errors: &mut Errors) -> Option<Cart> {
    const KNOWN: &[&str] = &[
        "cart_id",
        "customer",
        "shipping_address",
        "currency",
        "lines",
        "total",
    ];
    let fields = Fields::of(value, String::new(), KNOWN, errors)?;

    let cart_id = fields.required("cart_id", errors, |v, p, e| {
        code(
            v,
            p,
            |s| CartId::parse(s).ok(),
            "a hyphenated UUID (8-4-4-4-12 hex digits, either case) other than the nil UUID",
            e,
        )
    });
    let customer = fields.required("customer", errors, parse_customer);
    let shipping_address = fields.required("shipping_address", errors, parse_address);
    let currency = fields.required("currency", errors, |v, p, e| {
        code(v, p, CurrencyCode::parse, "an ISO 4217 currency code", e)
    });
    let lines = fields.required("lines", errors, parse_lines);
    let total = fields.required("total", errors, |v, p, e| {
        integer(v, p, 0, i64::MAX, e).and_then(Money::new)
    });

    let (lines, total) = (lines?, total?);
    check_total(&lines, total, errors)?;
    Some(Cart {
        cart_id: cart_id?,
        customer: customer?,
        shipping_address: shipping_address?,
        currency: currency?,
        lines,
        total,
    })
}

fn parse_customer(value: &Value, pointer: String, errors: &mut Errors) -> Option<Customer> {
    let fields = Fields::of(value, pointer, &["id", "name", "email", "phone"], errors)?;
    let id = fields.optional_text("id", &ID, errors);
    let name = fields.required_text("name", &NAME, errors);
    let email = fields.required("email", errors, |v, p, e| {
        code(
            v,
            p,
            Email::parse,
            "a valid e-mail address of at most 254 characters",
            e,
        )
    });
    let phone = fields
        .optional_text("phone", &PHONE, errors)
        .and_then(|phone| {
            let valid = phone.as_deref().is_none_or(|p| {
                p.chars().any(|c| c.is_ascii_digit())
                    && p.chars()
                        .all(|c| c.is_ascii_digit() || " +-().".contains(c))
            });
            if !valid {
                errors.push(
                    fields.pointer("phone"),
                    "must contain only digits, spaces and + - ( ) .",
                );
                return Err(());
            }
            Ok(phone)
        });
    Some(Customer {
        id: id.ok()?,
        name: name?,
        email: email?,
        phone: phone.ok()?,
    })
}

fn parse_address(value: &Value, pointer: String, errors: &mut Errors) -> Option<Address> {
    const KNOWN: &[&str] = &["line1", "line2", "city", "region", "postal_code", "country"];
    let fields = Fields::of(value, pointer, KNOWN, errors)?;
    let line1 = fields.required_text("line1", &ADDRESS_LINE, errors);
    let line2 = fields.optional_text("line2", &ADDRESS_LINE, errors);
    let city = fields.required_text("city", &CITY, errors);
    let region = fields.optional_text("region", &REGION, errors);
    let postal_code = fields.optional_text("postal_code", &POSTAL_CODE, errors);
    let country = fields.required("country", errors, |v, p, e| {
        code(
            v,
            p,
            CountryCode::parse,
            "an ISO 3166-1 alpha-2 country code",
            e,
        )
    });
    Some(Address {
        line1: line1?,
        line2: line2.ok()?,
        city: city?,
        region: region.ok()?,
        postal_code: postal_code.ok()?,
        country: country?,
    })
}

fn parse_lines(value: &Value, pointer: String, errors: &mut Errors) -> Option<Vec<Line>> {
    let Some(items) = value.as_array() else {
        errors.push(pointer, "must be an array");
        return None;
    };
    if items.is_empty() {
        errors.push(pointer, "must contain at least 1 line");
        return None;
    }
    if items.len() > MAX_LINES {
        errors.push(pointer, format!("must contain at most {MAX_LINES} lines"));
        return None;
    }
    let lines: Vec<Option<Line>> = items
        .iter()
        .enumerate()
        .map(|(i, item)| parse_line(item, format!("{pointer}/{i}"), errors))
        .collect();
    lines.into_iter().collect()
}

fn parse_line(value: &Value, pointer: String, errors: &mut Errors) -> Option<Line> {
    let fields = Fields::of(
        value,
        pointer,
        &["sku", "name", "quantity", "unit_price"],
        errors,
    )?;
    let sku = fields.required_text("sku", &SKU, errors);
    let name = fields.required_text("name", &NAME, errors);
    let quantity = fields.required("quantity", errors, |v, p, e| {
        integer(v, p, 1, MAX_QUANTITY, e).and_then(Quantity::new)
    });
    let unit_price = fields.required("unit_price", errors, |v, p, e| {
        integer(v, p, 0, i64::MAX, e).and_then(Money::new)
    });
    Some(Line {
        sku: sku?,
        name: name?,
        quantity: quantity?,
        unit_price: unit_price?,
    })
}

/// `total` must equal Σ quantity × unit_price, computed without overflow.
fn check_total(lines: &[Line], total: Money, errors: &mut Errors) -> Option<()> {
    let mut sum = Money::new(0)?;
    for (i, line) in lines.iter().enumerate() {
        let Some(amount) = line.unit_price.times(line.quantity) else {
            errors.push(
                format!("/lines/{i}/unit_price"),
                "quantity × unit_price does not fit in a 64-bit integer",
            );
            return None;
        };
        let Some(next) = sum.checked_add(amount) else {
            errors.push(
                "/total",
                "the sum of the lines does not fit in a 64-bit integer",
            );
            return None;
        };
        sum = next;
    }
    if sum != total {
        errors.push(
            "/total",
            format!(
                "must equal the sum of quantity × unit_price over the lines ({}), got {}",
                sum.minor_units(),
                total.minor_units()
            ),
        );
        return None;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cart() -> Value {
        json!({
            "cart_id": "6f1c0c1e-5d7b-4a53-9b1a-2f6a3d9f0c11",
            "customer": { "id": "cust-42", "name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0000" },
            "shipping_address": { "line1": "12 Analytical St", "line2": null, "city": "London",
                                  "region": "LND", "postal_code": "EC1A 1AA", "country": "GB" },
            "currency": "GBP",
            "lines": [ { "sku": "BOOK-001", "name": "Notes on the Engine", "quantity": 2, "unit_price": 1999 } ],
            "total": 3998
        })
    }

    fn pointers(value: &Value) -> Vec<String> {
        Cart::parse(value)
            .expect_err("invalid")
            .into_iter()
            .map(|e| e.pointer)
            .collect()
    }

    #[test]
    fn the_design_example_parses() {
        let cart = Cart::parse(&cart()).expect("valid");
        assert_eq!(cart.total.minor_units(), 3998);
        assert_eq!(cart.shipping_address.line2, None);
        assert_eq!(cart.currency.as_str(), "GBP");
    }

    #[test]
    fn normalised_carts_hash_the_same() {
        let mut other = cart();
        other["currency"] = json!(" gbp ");
        other["shipping_address"]["country"] = json!("gb");
        other["customer"]["name"] = json!("  Ada Lovelace ");
        let a = Cart::parse(&cart()).expect("valid");
        let b = Cart::parse(&other).expect("valid");
        assert_eq!(a.payload_hash(), b.payload_hash());
        other["total"] = json!(1999);
        other["lines"][0]["quantity"] = json!(1);
        let c = Cart::parse(&other).expect("valid");
        assert_ne!(a.payload_hash(), c.payload_hash());
    }

    #[test]
    fn every_bad_field_is_reported() {
        let mut bad = cart();
        bad["customer"]["email"] = json!("not-an-email");
        bad["lines"][0]["quantity"] = json!(0);
        bad["shipping_address"]["country"] = json!("XX");
        bad["surprise"] = json!(true);
        assert_eq!(
            pointers(&bad),
            [
                "/surprise",
                "/customer/email",
                "/shipping_address/country",
                "/lines/0/quantity"
            ]
        );
    }

    #[test]
    fn an_email_with_a_control_character_is_refused() {
        // Caught by the checkout_body fuzz target: RFC 5322 allows a tab in a quoted local part.
        let mut bad = cart();
        bad["customer"]["email"] = json!("\"ada\tlovelace\"@example.com");
        assert_eq!(pointers(&bad), ["/customer/email"]);
    }

    #[test]
    fn an_email_is_measured_in_characters() {
        // 233 characters but 265 bytes (a UTF-8 local part, RFC 6531): within the limit of
        // 254 characters the message states.
        let domain = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "example"
        );
        let address = format!("{}@{domain}", "ü".repeat(32));
        assert!(address.len() > 254 && address.chars().count() < 254);
        let mut good = cart();
        good["customer"]["email"] = json!(address);
        let parsed = Cart::parse(&good).expect("valid: measured in characters");
        assert_eq!(parsed.customer.email.as_str(), address);
    }

    #[test]
    fn overflow_is_a_field_error_not_a_panic() {
        let mut bad = cart();
        bad["lines"][0]["quantity"] = json!(10_000);
        bad["lines"][0]["unit_price"] = json!(i64::MAX / 2);
        assert_eq!(pointers(&bad), ["/lines/0/unit_price"]);
    }

    #[test]
    fn pointer_escapes_odd_keys() {
        let mut bad = cart();
        bad["a/b~c"] = json!(1);
        assert_eq!(pointers(&bad), ["/a~1b~0c"]);
    }
}
