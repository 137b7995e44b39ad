//! Doubling waits between retries, capped: one type for every loop that retries a
//! dependency (the workers' database and receiver, the AMQP connection).

use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// Back to the shortest wait, after something worked.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// The wait now; the next one is twice as long, up to the cap.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// Like [`Backoff::next_wait`], but a random point between half and all of it, so
    /// that many clients of one server do not retry in step.
    pub fn next_jittered(&mut self) -> Duration {
        let half = self.next_wait() / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(200);
    const MAX: Duration = Duration::from_secs(15);

    #[test]
    fn waits_double_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::new(MIN, MAX);
        assert_eq!(backoff.next_wait(), MIN);
        assert_eq!(backoff.next_wait(), MIN * 2);
        let waits: Vec<Duration> = (0..20).map(|_| backoff.next_wait()).collect();
        assert_eq!(waits.last(), Some(&MAX));
        backoff.reset();
        assert_eq!(backoff.next_wait(), MIN);
    }

    #[test]
    fn jittered_waits_stay_within_half_and_all_of_the_step() {
        let mut backoff = Backoff::new(MIN, MAX);
        let first = backoff.next_jittered();
        assert!(first >= MIN / 2 && first <= MIN);
        let waits: Vec<Duration> = (0..20).map(|_| backoff.next_jittered()).collect();
        assert!(waits.iter().all(|w| *w <= MAX));
        assert!(waits.last().is_some_and(|w| *w >= MAX / 2));
    }
}
