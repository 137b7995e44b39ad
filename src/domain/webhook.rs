//! Webhooks as the [Standard Webhooks](https://www.standardwebhooks.com/) specification
//! says (issue 20): `whsec_` secrets, the `v1,` signature over `id.timestamp.body`, the
//! retry schedule, which events an endpoint wants, and which receiver addresses are
//! refused (server-side request forgery). Plain data and pure functions.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::event::EventType;

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Bytes of key in a secret cartbus makes (the specification asks for 24 to 64).
const NEW_KEY_BYTES: usize = 32;
const MIN_KEY_BYTES: usize = 24;
const MAX_KEY_BYTES: usize = 64;
/// Longest receiver URL taken.
pub const MAX_URL: usize = 2_000;
/// Longest description taken.
pub const MAX_DESCRIPTION: usize = 500;

/// A signing secret: `whsec_` and the base64 of its key. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    text: String,
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// A new random secret.
    pub fn generate() -> Secret {
        let key: [u8; NEW_KEY_BYTES] = rand::random();
        Secret {
            text: format!("{SECRET_PREFIX}{}", BASE64.encode(key)),
            key: key.to_vec(),
        }
    }

    /// Reads `whsec_<base64>`; the message never repeats the value.
    pub fn parse(text: &str) -> Result<Secret, String> {
        let Some(encoded) = text.strip_prefix(SECRET_PREFIX) else {
            return Err(format!(
                "must start with `{SECRET_PREFIX}` (a Standard Webhooks secret)"
            ));
        };
        let key = BASE64
            .decode(encoded)
            .map_err(|_| format!("must be `{SECRET_PREFIX}` and base64"))?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(format!(
                "its key must be {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, got {}",
                key.len()
            ));
        }
        Ok(Secret {
            text: text.to_string(),
            key,
        })
    }

    /// `whsec_…`, to store it or to show it once to the operator who made it.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

/// The `webhook-signature` header: one `v1,…` per secret, space-separated (during a
/// rotation the receiver accepts whichever of its secrets matches).
pub fn signature_header(secrets: &[Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The event types an endpoint wants; `None` = every type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFilter(Option<Vec<EventType>>);

impl EventFilter {
    pub const ALL: EventFilter = EventFilter(None);

    /// From the types named; an unknown name is an error that names it.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<EventFilter, String> {
        let mut types = Vec::new();
        for name in names {
            let name = name.trim();
            if name.is_empty() {
                continue;
            }
            let kind = EventType::parse(name).ok_or_else(|| {
                format!(
                    "unknown event type `{}`: one of {}",
                    name.chars().take(60).collect::<String>(),
                    EventType::ALL.map(EventType::as_str).join(", ")
                )
            })?;
            if !types.contains(&kind) {
                types.push(kind);
            }
        }
        if types.is_empty() {
            return Err("names no event type".into());
        }
        Ok(EventFilter(Some(types)))
    }

    /// As stored: comma-separated, or `None` for every type.
    pub fn stored(&self) -> Option<String> {
        self.0.as_ref().map(|types| {
            types
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
    }

    /// From the stored column (written by [`EventFilter::stored`]).
    pub fn from_stored(stored: Option<&str>) -> EventFilter {
        match stored {
            None => EventFilter::ALL,
            Some(list) => EventFilter::parse(list.split(',')).unwrap_or(EventFilter::ALL),
        }
    }

    /// The names, for the API: every type when all are wanted.
    pub fn names(&self) -> Vec<&'static str> {
        match &self.0 {
            None => EventType::ALL.iter().map(|t| t.as_str()).collect(),
            Some(types) => types.iter().map(|t| t.as_str()).collect(),
        }
    }

    pub fn wants(&self, kind: &str) -> bool {
        match &self.0 {
            None => true,
            Some(types) => types.iter().any(|t| t.as_str() == kind),
        }
    }
}

/// An endpoint's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointState {
    /// Delivering.
    Enabled,
    /// A delivery ran out of retries: probed once per retry cap, enabled again on the first
    /// 2xx. Events still queue up for it.
    Failing,
    /// Turned off by an operator, or by the receiver (410 Gone). No events queue up.
    Disabled,
}

impl EndpointState {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Enabled => "enabled",
            EndpointState::Failing => "failing",
            EndpointState::Disabled => "disabled",
        }
    }

    pub fn parse(text: &str) -> Option<EndpointState> {
        [
            EndpointState::Enabled,
            EndpointState::Failing,
            EndpointState::Disabled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// How long to wait before attempt `attempts + 1`, after `attempts` failed: `base` doubled
/// per failure up to `cap`, then a point between half and all of it (`jitter` in 0..1),
/// so that the retries of many events do not land on the receiver together.
pub fn retry_delay(attempts: u32, base: Duration, cap: Duration, jitter: f64) -> Duration {
    let doublings = attempts.saturating_sub(1).min(32);
    let full = base.saturating_mul(1u32 << doublings.min(31)).min(cap);
    let half = full / 2;
    half + half.mul_f64(jitter.clamp(0.0, 1.0))
}

/// A receiver URL as given: http(s), a host, no credentials in it (they would end up in
/// logs and listings), at most [`MAX_URL`] bytes.
pub fn check_url(raw: &str) -> Result<url::Url, String> {
    if raw.len() > MAX_URL {
        return Err(format!("at most {MAX_URL} bytes"));
    }
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".into());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a user or password: the signature authenticates".into());
    }
    if url.fragment().is_some() {
        return Err("must not have a #fragment".into());
    }
    Ok(url)
}

/// Receiver addresses that reach inside the shop's own network: loopback, private,
/// link-local (cloud metadata), shared (CGNAT), unspecified, multicast, broadcast and
/// unique-local, IPv4 inside IPv6 included. `allowed` lists networks let through anyway
/// (`CARTBUS_WEBHOOK_ALLOW_NETWORKS`).
pub fn forbidden_address(ip: IpAddr, allowed: &[ipnet::IpNet]) -> Option<&'static str> {
    if allowed.iter().any(|net| net.contains(&ip)) {
        return None;
    }
    let ip = match ip {
        IpAddr::V6(v6) => embedded_ipv4(v6).map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_private() {
                Some("private")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if a == 100 && (64..128).contains(&b) {
                Some("shared (carrier-grade NAT)")
            } else if v4.is_unspecified() || a == 0 {
                Some("unspecified")
            } else if v4.is_multicast() || v4.is_broadcast() || a >= 240 {
                Some("multicast or reserved")
            } else if (a == 198 && (b & 0xfe) == 18) || (a == 192 && b == 0 && v4.octets()[2] == 0)
            {
                Some("special-purpose (benchmarking or protocol assignments)")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xfe00 == 0xfc00 {
                Some("unique-local (private)")
            } else if first & 0xffc0 == 0xfe80 || first & 0xffc0 == 0xfec0 {
                Some("link-local or site-local")
            } else if v6.is_multicast() {
                Some("multicast or reserved")
            } else {
                None
            }
        }
    }
}

/// The IPv4 address inside an IPv6 one that carries it: IPv4-mapped (`::ffff:a.b.c.d`),
/// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4 (`2002:ab:cd::`).
fn embedded_ipv4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let from = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        std::net::Ipv4Addr::new(a, b, c, d)
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    match v6.segments() {
        // `::` and `::1` are IPv6's own unspecified and loopback.
        [0, 0, 0, 0, 0, 0, hi, lo] if (hi, lo) != (0, 0) && (hi, lo) != (0, 1) => {
            Some(from(hi, lo))
        }
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(from(hi, lo)),
        [0x2002, hi, lo, ..] => Some(from(hi, lo)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_standard_webhooks_reference_does() {
        // The specification's own example (standard-webhooks/spec, "Verifying").
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_made_and_read_back_but_never_printed() {
        let made = Secret::generate();
        assert!(made.expose().starts_with(SECRET_PREFIX));
        assert_eq!(Secret::parse(made.expose()).unwrap(), made);
        assert_eq!(format!("{made:?}"), "Secret(…)");
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Secret::parse("whsec_!!").is_err());
        assert!(Secret::parse("whsec_c2hvcnQ=").is_err());
    }

    #[test]
    fn a_rotation_signs_with_every_secret() {
        let (new, old) = (Secret::generate(), Secret::generate());
        let header = signature_header(&[new.clone(), old.clone()], "evt_1", 5, b"{}");
        assert_eq!(
            header,
            format!(
                "{} {}",
                new.sign("evt_1", 5, b"{}"),
                old.sign("evt_1", 5, b"{}")
            )
        );
    }

    #[test]
    fn retries_double_from_the_base_up_to_the_cap_with_jitter_below() {
        let (base, cap) = (Duration::from_secs(5), Duration::from_secs(3600));
        assert_eq!(retry_delay(1, base, cap, 1.0), base);
        assert_eq!(retry_delay(1, base, cap, 0.0), base / 2);
        assert_eq!(retry_delay(3, base, cap, 1.0), base * 4);
        assert_eq!(retry_delay(30, base, cap, 1.0), cap);
        assert_eq!(retry_delay(u32::MAX, base, cap, 0.0), cap / 2);
    }

    #[test]
    fn filters_name_known_types_only() {
        let filter = EventFilter::parse(["checkout.ordered", " order.status_changed"]).unwrap();
        assert!(filter.wants("checkout.ordered"));
        assert!(!filter.wants("checkout.rejected"));
        assert_eq!(EventFilter::from_stored(filter.stored().as_deref()), filter);
        assert!(
            EventFilter::parse(["checkout.shipped"])
                .unwrap_err()
                .contains("checkout.shipped")
        );
        assert!(EventFilter::parse([""]).is_err());
        assert!(EventFilter::ALL.wants("order.status_changed"));
    }

    #[test]
    fn urls_with_credentials_or_other_schemes_are_refused() {
        assert!(check_url("https://shop.example/hooks").is_ok());
        assert!(check_url("ftp://shop.example/").is_err());
        assert!(check_url("https://user:pw@shop.example/").is_err());
        assert!(check_url("https://").is_err());
        assert!(check_url("https://shop.example/#x").is_err());
    }

    #[test]
    fn inside_addresses_are_refused_unless_allowed() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for inside in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "fec0::1",
            "198.18.0.1",
            "192.0.0.8",
            "224.0.0.1",
        ] {
            assert!(forbidden_address(ip(inside), &[]).is_some(), "{inside}");
        }
        for outside in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "::ffff:93.184.216.34",
            "64:ff9b::5db8:d822",
        ] {
            assert_eq!(forbidden_address(ip(outside), &[]), None, "{outside}");
        }
        let allowed: Vec<ipnet::IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        assert_eq!(forbidden_address(ip("127.0.0.1"), &allowed), None);
        assert!(forbidden_address(ip("10.0.0.1"), &allowed).is_some());
    }
}
