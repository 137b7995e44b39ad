//! The drain-switch policy (DESIGN §6), written once: given what the switch says and the
//! schema the database is at, what may this instance do? The watcher asks for its
//! [`Mode`]; every transaction that writes orders from the queue asks [`Identity::forbids`]
//! inside itself, so that nothing commits after the switch said stop.

/// What this instance may do, from the switch, its version and its schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Not yet known (before the first read of the switch): do not consume.
    Unknown,
    Consume,
    Pause,
    /// Not the active version, or `CARTBUS_CONSUMER=off`.
    Passive,
    /// The database has migrations this binary does not know: never consume, never write.
    Fenced,
}

/// The switch as read, with the newest migration applied to the database.
#[derive(Clone, Copy, Debug)]
pub struct SwitchReading<'a> {
    pub paused: bool,
    pub active_version: Option<&'a str>,
    pub applied_schema: i64,
}

/// This instance, as the switch sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `CARTBUS_INSTANCE`: the name its heartbeats carry.
    pub instance: String,
    /// `CARTBUS_VERSION`: the switch's `active_version` names the one allowed to consume.
    pub version: String,
    /// The newest migration this binary knows.
    pub known_schema: i64,
    /// `CARTBUS_CONSUMER`: off keeps this instance passive whatever the switch says.
    pub consumer_enabled: bool,
}

impl Identity {
    fn fenced(&self, reading: &SwitchReading<'_>) -> bool {
        reading.applied_schema > self.known_schema
    }

    fn another_version_is_active(&self, reading: &SwitchReading<'_>) -> bool {
        reading
            .active_version
            .is_some_and(|active| active != self.version)
    }

    /// What this instance's consumer does under the switch.
    pub fn mode(&self, reading: &SwitchReading<'_>) -> Mode {
        if self.fenced(reading) {
            Mode::Fenced
        } else if !self.consumer_enabled || self.another_version_is_active(reading) {
            Mode::Passive
        } else if reading.paused {
            Mode::Pause
        } else {
            Mode::Consume
        }
    }

    /// Why this instance must not commit orders from the queue now (a batch, a resubmit);
    /// `None` when it may. `CARTBUS_CONSUMER=off` does not forbid it: that setting only
    /// keeps this instance's own consumer from running.
    pub fn forbids(&self, reading: &SwitchReading<'_>) -> Option<&'static str> {
        if reading.paused {
            Some("the consumer is paused")
        } else if self.another_version_is_active(reading) {
            Some("another version is the active one")
        } else if self.fenced(reading) {
            Some("the database has a newer schema (fenced)")
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            instance: "a".into(),
            version: "2.0.0".into(),
            known_schema: 8,
            consumer_enabled: true,
        }
    }

    fn reading(paused: bool, active: Option<&str>, applied: i64) -> SwitchReading<'_> {
        SwitchReading {
            paused,
            active_version: active,
            applied_schema: applied,
        }
    }

    #[test]
    fn the_mode_and_the_in_transaction_check_agree() {
        let me = identity();
        let cases = [
            (reading(false, None, 8), Mode::Consume),
            (reading(false, Some("2.0.0"), 8), Mode::Consume),
            (reading(true, Some("2.0.0"), 8), Mode::Pause),
            (reading(false, Some("1.0.0"), 8), Mode::Passive),
            (reading(false, None, 9), Mode::Fenced),
            (reading(true, Some("1.0.0"), 9), Mode::Fenced),
        ];
        for (reading, mode) in cases {
            assert_eq!(me.mode(&reading), mode, "{reading:?}");
            assert_eq!(
                me.forbids(&reading).is_none(),
                mode == Mode::Consume,
                "{reading:?}"
            );
        }
    }

    #[test]
    fn consumer_off_is_passive_but_may_still_write() {
        let me = Identity {
            consumer_enabled: false,
            ..identity()
        };
        let running = reading(false, None, 8);
        assert_eq!(me.mode(&running), Mode::Passive);
        assert_eq!(me.forbids(&running), None);
    }
}
