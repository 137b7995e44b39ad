//! Wrong admin credentials, counted per client address and for all clients together, so
//! that the admin token cannot be guessed at speed (docs/operations.md#hostile-clients).
//!
//! A fixed window per client: after `per_client` failures the client is held off until
//! the window that began with its first failure ends, whatever it presents, even the
//! right token. The same over all clients with `global`, when it is set: off by default,
//! because guesses spread over many addresses would then hold every operator off too
//! (the per-client limit and a long random token are what make guessing hopeless).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::AuthFailureLimits;

pub struct AuthFailures {
    per_client: u32,
    /// `None`: no limit over all clients.
    global: Option<u32>,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    all: Window,
    clients: HashMap<IpAddr, Window>,
}

#[derive(Clone, Copy, Default)]
struct Window {
    started: Option<Instant>,
    failures: u32,
}

impl Window {
    /// Failures in the window still open at `now`.
    fn failures_at(&self, now: Instant, length: Duration) -> u32 {
        match self.started {
            Some(started) if now.duration_since(started) < length => self.failures,
            _ => 0,
        }
    }

    fn add(&mut self, now: Instant, length: Duration) -> u32 {
        if self.failures_at(now, length) == 0 {
            *self = Window {
                started: Some(now),
                failures: 0,
            };
        }
        self.failures += 1;
        self.failures
    }

    /// How long until the window ends.
    fn left(&self, now: Instant, length: Duration) -> Duration {
        self.started
            .map(|started| (started + length).saturating_duration_since(now))
            .unwrap_or_default()
    }
}

/// Most client addresses with failures tracked at once when there is no global limit.
const MAX_CLIENTS: usize = 100_000;

/// A failure just recorded: the client's and everyone's count in their windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    pub client: u32,
    pub all: u32,
    /// This failure used up the client's or the global allowance.
    pub limit_reached: bool,
}

/// Why a client may not present credentials now, and until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldOff {
    pub retry_after: Duration,
    /// Held off because of all clients' failures, not (only) this one's.
    pub global: bool,
}

impl AuthFailures {
    pub fn new(limits: &AuthFailureLimits) -> AuthFailures {
        AuthFailures {
            per_client: limits.per_client,
            global: (limits.global > 0).then_some(limits.global),
            window: limits.window,
            state: Mutex::default(),
        }
    }

    /// `Err` when `client` (or everyone) has used up its failures in the open window.
    pub fn check(&self, client: IpAddr) -> Result<(), HeldOff> {
        self.check_at(client, Instant::now())
    }

    pub fn record(&self, client: IpAddr) -> Recorded {
        self.record_at(client, Instant::now())
    }

    fn check_at(&self, client: IpAddr, now: Instant) -> Result<(), HeldOff> {
        let state = self.state.lock().expect("auth failures lock");
        if let Some(window) = state.clients.get(&client)
            && window.failures_at(now, self.window) >= self.per_client
        {
            return Err(HeldOff {
                retry_after: window.left(now, self.window),
                global: false,
            });
        }
        if let Some(global) = self.global
            && state.all.failures_at(now, self.window) >= global
        {
            return Err(HeldOff {
                retry_after: state.all.left(now, self.window),
                global: true,
            });
        }
        Ok(())
    }

    fn record_at(&self, client: IpAddr, now: Instant) -> Recorded {
        let mut state = self.state.lock().expect("auth failures lock");
        // With a global limit, failures are recorded only while its allowance lasts, so the
        // live entries stay within about twice it; without one, within MAX_CLIENTS. Expired
        // ones go when the map reaches that. Past MAX_CLIENTS live entries a new address
        // is not tracked (each entry is a few dozen bytes: memory stays bounded).
        let bound = self.global.map_or(MAX_CLIENTS, |g| g as usize);
        if !state.clients.contains_key(&client) && state.clients.len() >= bound {
            let window = self.window;
            state.clients.retain(|_, w| w.failures_at(now, window) > 0);
        }
        if !state.clients.contains_key(&client) && state.clients.len() >= MAX_CLIENTS {
            let all = state.all.add(now, self.window);
            return Recorded {
                client: 0,
                all,
                limit_reached: self.global == Some(all),
            };
        }
        let client = state
            .clients
            .entry(client)
            .or_default()
            .add(now, self.window);
        let all = state.all.add(now, self.window);
        Recorded {
            client,
            all,
            limit_reached: client == self.per_client || self.global == Some(all),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_client: u32, global: u32, window_seconds: u64) -> AuthFailures {
        AuthFailures {
            per_client,
            global: Some(global),
            window: Duration::from_secs(window_seconds),
            state: Mutex::default(),
        }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn a_client_is_held_off_after_its_failures_until_its_window_ends() {
        let failures = limits(3, 100, 60);
        let start = Instant::now();
        for n in 1..=3 {
            assert_eq!(failures.check_at(A, start), Ok(()));
            let recorded = failures.record_at(A, start + Duration::from_secs(n));
            assert_eq!(
                (recorded.client, recorded.limit_reached),
                (n as u32, n == 3)
            );
        }
        let held = failures
            .check_at(A, start + Duration::from_secs(10))
            .expect_err("held off");
        assert_eq!(held.retry_after, Duration::from_secs(51));
        assert!(!held.global);
        assert_eq!(
            failures.check_at(B, start + Duration::from_secs(10)),
            Ok(())
        );
        // The window began with the first failure, one second in.
        assert_eq!(
            failures.check_at(A, start + Duration::from_secs(61)),
            Ok(())
        );
        assert_eq!(
            failures
                .record_at(A, start + Duration::from_secs(61))
                .client,
            1
        );
    }

    #[test]
    fn failures_from_all_clients_together_hold_everyone_off() {
        let failures = limits(10, 4, 60);
        let now = Instant::now();
        for client in [A, A, B] {
            failures.record_at(client, now);
        }
        assert_eq!(failures.check_at(A, now), Ok(()));
        assert!(failures.record_at(B, now).limit_reached);
        let third = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 3));
        let held = failures.check_at(third, now).expect_err("held off");
        assert!(held.global);
        assert_eq!(held.retry_after, Duration::from_secs(60));
    }

    #[test]
    fn without_a_global_limit_guesses_from_many_addresses_hold_off_only_those_addresses() {
        let failures = AuthFailures::new(&AuthFailureLimits {
            per_client: 2,
            global: 0,
            window: Duration::from_secs(60),
        });
        let now = Instant::now();
        for n in 0..1000u32 {
            let guesser = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            failures.record_at(guesser, now);
            failures.record_at(guesser, now);
            assert!(failures.check_at(guesser, now).is_err());
        }
        assert_eq!(
            failures.check_at(A, now),
            Ok(()),
            "an operator still gets in"
        );
    }

    #[test]
    fn expired_clients_are_forgotten_when_many_have_failed() {
        let failures = limits(10, 2, 60);
        let now = Instant::now();
        failures.record_at(A, now);
        failures.record_at(B, now);
        let later = now + Duration::from_secs(120);
        let third = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 3));
        failures.record_at(third, later);
        let state = failures.state.lock().expect("lock");
        assert_eq!(state.clients.len(), 1);
    }
}
