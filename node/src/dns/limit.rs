//! Per-client rate limiting: a token bucket per client IP address, in a map of bounded size.
//!
//! A bucket holds up to twice the rate in tokens and refills at the rate; each message takes
//! one, and a message that finds the bucket empty is dropped unread. Time comes in as an
//! argument, so the tests drive it by hand.
//!
//! The map holds at most [`CLIENTS_MAX`] buckets. A bucket that has refilled to the brim says
//! nothing a fresh one would not, so when the map is full such buckets are forgotten (a sweep,
//! at most once per [`SWEEP_INTERVAL`]: it walks the whole map). Clients that find the map full
//! of active buckets share one overflow bucket, so a flood from spoofed source addresses costs
//! a bounded map and a rate cap on newcomers, never unbounded memory, and the clients already
//! known keep their own rates meanwhile. Per-address limits cannot stop a spoofed flood from
//! being answered at all (each fake address brings a fresh bucket); they stop one client, or
//! a few, from taking the server.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Clients with a bucket of their own at once (about 100 bytes each).
pub(crate) const CLIENTS_MAX: usize = 4096;

/// Least time between two sweeps of a full map.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// Token buckets by client address.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate_per_s: f64,
    burst: f64,
    clients: BTreeMap<IpAddr, Bucket>,
    clients_max: usize,
    /// Shared by clients that found the map full of active buckets.
    overflow: Bucket,
    swept_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refilled(&self, now: Instant, rate_per_s: f64, burst: f64) -> f64 {
        let elapsed_s = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed_s * rate_per_s).min(burst)
    }

    fn take(&mut self, now: Instant, rate_per_s: f64, burst: f64) -> bool {
        self.tokens = self.refilled(now, rate_per_s, burst);
        // A clock that went backwards (it cannot: the instants are monotonic) must not
        // move `at` back and so mint tokens twice for the same span.
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl RateLimiter {
    /// `per_client_qps` messages a second per client, bursts of twice that.
    pub(crate) fn new(per_client_qps: u32, now: Instant) -> RateLimiter {
        RateLimiter::with_clients_max(per_client_qps, CLIENTS_MAX, now)
    }

    fn with_clients_max(per_client_qps: u32, clients_max: usize, now: Instant) -> RateLimiter {
        let rate_per_s = f64::from(per_client_qps.max(1));
        let burst = 2.0 * rate_per_s;
        RateLimiter {
            rate_per_s,
            burst,
            clients: BTreeMap::new(),
            clients_max,
            overflow: Bucket::full(burst, now),
            swept_at: None,
        }
    }

    /// Whether `client` may send one more message at `now` (takes a token if so).
    pub(crate) fn admit(&mut self, client: IpAddr, now: Instant) -> bool {
        let (rate, burst) = (self.rate_per_s, self.burst);
        if let Some(bucket) = self.clients.get_mut(&client) {
            return bucket.take(now, rate, burst);
        }
        if self.clients.len() >= self.clients_max {
            self.sweep(now);
        }
        if self.clients.len() >= self.clients_max {
            return self.overflow.take(now, rate, burst);
        }
        let mut bucket = Bucket::full(burst, now);
        let admitted = bucket.take(now, rate, burst);
        self.clients.insert(client, bucket);
        admitted
    }

    /// Forgets buckets that have refilled to the brim, at most once per [`SWEEP_INTERVAL`].
    fn sweep(&mut self, now: Instant) {
        if self
            .swept_at
            .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_INTERVAL)
        {
            return;
        }
        self.swept_at = Some(now);
        let (rate, burst) = (self.rate_per_s, self.burst);
        self.clients
            .retain(|_, bucket| bucket.refilled(now, rate, burst) < burst);
    }

    /// Clients with a bucket of their own now.
    #[cfg(test)]
    pub(crate) fn clients(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    fn admitted(limiter: &mut RateLimiter, client: IpAddr, now: Instant, tries: usize) -> usize {
        (0..tries).filter(|_| limiter.admit(client, now)).count()
    }

    #[test]
    fn a_client_gets_twice_its_rate_at_once_then_its_rate() {
        let start = crate::clock::monotonic();
        let mut limiter = RateLimiter::new(100, start);
        assert_eq!(admitted(&mut limiter, ip(1), start, 1000), 200);
        // Another client is not held back by the first one's flood.
        assert_eq!(admitted(&mut limiter, ip(2), start, 10), 10);
        let later = start + Duration::from_millis(500);
        assert_eq!(admitted(&mut limiter, ip(1), later, 1000), 50);
        let much_later = later + Duration::from_secs(60);
        assert_eq!(admitted(&mut limiter, ip(1), much_later, 1000), 200);
    }

    #[test]
    fn spoofed_sources_cannot_grow_the_map_past_its_bound() {
        let start = crate::clock::monotonic();
        let mut limiter = RateLimiter::with_clients_max(10, 64, start);
        // The known client spends half its burst before the flood.
        assert_eq!(admitted(&mut limiter, ip(0), start, 10), 10);
        let mut now = start;
        for n in 1..100_000 {
            now += Duration::from_micros(10);
            limiter.admit(ip(n), now);
            assert!(limiter.clients() <= 64, "{} clients", limiter.clients());
        }
        // Newcomers beyond the bound shared one bucket: most of them were dropped.
        let mut newcomers = 0;
        for n in 100_000..100_100 {
            newcomers += usize::from(limiter.admit(ip(n), now));
        }
        assert!(newcomers <= 20, "{newcomers} newcomers admitted");
    }

    #[test]
    fn refilled_buckets_are_forgotten_when_the_map_is_full() {
        let start = crate::clock::monotonic();
        let mut limiter = RateLimiter::with_clients_max(10, 4, start);
        for n in 0..4 {
            assert!(limiter.admit(ip(n), start));
        }
        // One token refills in 100 ms: by then every bucket is full again and can go.
        let later = start + Duration::from_millis(150);
        assert_eq!(admitted(&mut limiter, ip(9), later, 20), 20);
        assert_eq!(limiter.clients(), 1);
    }
}
