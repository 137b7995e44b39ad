//! The body of `POST /v1/checkouts`, as the handler reads it: bytes → `serde_json::Value`
//! (what the `JsonBody` extractor does) → `Cart::parse`. Beyond "no panic", it checks what
//! the parser promises: a rejection names every bad field by a pointer into the body; an
//! accepted cart obeys DESIGN §3 and parses back from its own serialisation unchanged.

#![no_main]

use cartbus::domain::{Cart, FieldError, MAX_LINES, MAX_QUANTITY};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    // Malformed JSON is a 400 before the cart parser sees it.
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    match Cart::parse(&value) {
        Ok(cart) => check_cart(&cart),
        Err(errors) => check_rejection(&value, &errors),
    }
});

fn check_rejection(body: &Value, errors: &[FieldError]) {
    assert!(
        !errors.is_empty(),
        "a rejection must name at least one field"
    );
    for error in errors {
        assert!(!error.detail.is_empty(), "{error:?} says nothing");
        // "" (RFC 6901: the whole document) only ever for a body that is not an object.
        if error.pointer.is_empty() {
            assert!(
                !body.is_object(),
                "{error:?} names the whole of an object body"
            );
            continue;
        }
        assert!(
            error.pointer.starts_with('/'),
            "{error:?}: not a JSON pointer"
        );
        // The pointer must lead into the body the client sent: to the field itself, or,
        // for a missing one, to the object it is missing from.
        let target = if error.detail == "is required" {
            error
                .pointer
                .rsplit_once('/')
                .map_or("", |(parent, _)| parent)
        } else {
            error.pointer.as_str()
        };
        assert!(
            body.pointer(target).is_some(),
            "{error:?}: {target:?} is not in the body"
        );
    }
}

fn check_cart(cart: &Cart) {
    assert!((1..=MAX_LINES).contains(&cart.lines.len()));
    let mut sum: i128 = 0;
    for line in &cart.lines {
        assert!((1..=MAX_QUANTITY).contains(&i64::from(line.quantity.get())));
        assert!(line.unit_price.minor_units() >= 0);
        sum += i128::from(line.quantity.get()) * i128::from(line.unit_price.minor_units());
    }
    assert_eq!(
        i128::from(cart.total.minor_units()),
        sum,
        "total is not Σ quantity × unit_price"
    );

    let Cart {
        customer,
        shipping_address: address,
        ..
    } = cart;
    let texts = [
        Some(customer.name.as_str()),
        customer.id.as_deref(),
        customer.phone.as_deref(),
        Some(customer.email.as_str()),
        Some(address.line1.as_str()),
        address.line2.as_deref(),
        Some(address.city.as_str()),
        address.region.as_deref(),
        address.postal_code.as_deref(),
        Some(address.country.as_str()),
        Some(cart.currency.as_str()),
    ];
    let line_texts = cart
        .lines
        .iter()
        .flat_map(|line| [Some(line.sku.as_str()), Some(line.name.as_str())]);
    for text in texts.into_iter().chain(line_texts).flatten() {
        assert!(!text.is_empty(), "an accepted string is empty");
        assert_eq!(text, text.trim(), "an accepted string is not trimmed");
        assert!(
            !text.chars().any(char::is_control),
            "an accepted string holds a control character: {text:?}"
        );
    }

    // What cartbus stores and sends on is its own serialisation: it must mean the same cart.
    let again = serde_json::to_vec(cart).expect("a cart serialises");
    let again: Value = serde_json::from_slice(&again).expect("a serialised cart is JSON");
    let reparsed = Cart::parse(&again).expect("a serialised cart parses again");
    assert_eq!(&reparsed, cart, "parse ∘ serialise is not the identity");
    assert_eq!(reparsed.payload_hash(), cart.payload_hash());
}
