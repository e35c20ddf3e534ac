//! Bounded logging of what a guest (or a peer) gets wrong, without a clock: the first
//! [`FIRST_LINES`] occurrences are logged, then only the 2^n-th, so a guest that
//! repeats a bad access forever costs a logarithmic number of lines.

/// Occurrences logged before the back-off starts.
pub const FIRST_LINES: u64 = 16;

/// Counts occurrences of one kind of message and says which to log.
#[derive(Clone, Debug, Default)]
pub struct LogLimiter {
    seen: u64,
}

impl LogLimiter {
    pub fn new() -> LogLimiter {
        LogLimiter::default()
    }

    /// Counts one occurrence; true if this one is to be logged.
    pub fn allow(&mut self) -> bool {
        self.seen = self.seen.saturating_add(1);
        self.seen <= FIRST_LINES || self.seen.is_power_of_two()
    }

    /// Occurrences so far.
    pub fn seen(&self) -> u64 {
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_million_occurrences_cost_a_few_dozen_lines() {
        let mut limiter = LogLimiter::new();
        let logged = (0..1_000_000).filter(|_| limiter.allow()).count();
        assert_eq!(logged, 16 + 15); // 1..=16, then 32, 64, ..., 2^19
        assert_eq!(limiter.seen(), 1_000_000);
    }
}
