//! Back-off after failed logins, per source address and per username.
//!
//! At CONNECT the network layer calls [`Throttle::check`] before verifying the password (a refused attempt costs
//! no hashing), then [`Throttle::record_failure`] or [`Throttle::record_success`]. While a source or a username
//! is held back, CONNECT is refused with "not authorized" (or "server busy") without looking at the password.
//!
//! # Policy
//!
//! - The first [`ThrottleConfig::free_failures`] failures cost nothing: people mistype.
//! - After that each failure holds the key back for a delay that starts at [`ThrottleConfig::base_delay`]
//!   and doubles with each further failure, up to [`ThrottleConfig::max_delay`] (defaults: after 5 failures
//!   1 s, then 2 s, 4 s, ... capped at 60 s).
//! - A key with no failure for [`ThrottleConfig::forget_after`] starts again from zero.
//! - Success resets the username's counter. It does not reset the address's counter: otherwise an attacker
//!   with one valid account could log into it between guesses at others from the same address.
//!
//! # Not a lock-out tool
//!
//! An attacker must not be able to use the throttle to keep a real device out:
//!
//! - **Per address**: failures from the attacker's address hold back that address only. A device connecting
//!   from another address is not affected by them.
//! - **Per username**: an attacker guessing one device's password from many addresses does hold that username
//!   back, but never for more than `max_delay` after its last failure, and never from an address that has
//!   logged in successfully as that user before (the last [`ThrottleConfig::trusted_per_user`] such addresses
//!   are remembered). On a factory floor devices have stable addresses, so a device that has ever connected
//!   keeps connecting during an attack; only a device's very first login can be delayed, by at most
//!   `max_delay` per attempt.
//! - IPv6 addresses are counted per /64, since one host usually owns a whole /64 and could otherwise cycle
//!   through addresses for free. IPv4-mapped IPv6 addresses count as the IPv4 address.
//!
//! # Memory
//!
//! Each of the two tables keeps at most [`ThrottleConfig::max_tracked`] keys. When a new key arrives in a full
//! table, keys whose failures have been forgotten are dropped first, then the least recently seen one. An
//! attacker cycling through addresses or usernames therefore cannot grow memory without bound; the price is
//! that it may push out older entries, which forgets their failures (and, for a username, its trusted
//! addresses along with them): the throttle becomes more lenient for them, never stricter. That
//! sweep is O(n) in the table size and happens only when a new key meets a full table (tens of microseconds
//! for 10,000 keys, against milliseconds for the password hash the attempt would cost).
//!
//! The throttle is plain data: time is passed in as an [`Instant`] (tests need no sleeping), and the caller
//! keeps it behind a `Mutex` held for one call.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Tunable limits. [`ThrottleConfig::default`] is the policy described in the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Failures allowed before any delay.
    pub free_failures: u32,
    /// The delay after the first failure beyond the free ones.
    pub base_delay: Duration,
    /// The longest delay, however many failures: what bounds a lock-out.
    pub max_delay: Duration,
    /// A key without failures for this long is forgotten. Longer than `max_delay`, or delays would never grow.
    pub forget_after: Duration,
    /// Keys kept per table (addresses, usernames).
    pub max_tracked: usize,
    /// Addresses remembered per username as having logged in successfully, exempt from that username's delay.
    pub trusted_per_user: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            free_failures: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            forget_after: Duration::from_secs(15 * 60),
            max_tracked: 10_000,
            trusted_per_user: 4,
        }
    }
}

/// The attempt is held back: try again after this long. (MQTT 5 has no retry-after field; the network layer
/// logs it and refuses the CONNECT.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many failed logins; retry after {} s", .0.as_secs_f64().ceil())]
pub struct RetryAfter(pub Duration);

/// Failed-login counters per source address and per username.
#[derive(Debug, Clone)]
pub struct Throttle {
    config: ThrottleConfig,
    addresses: Table<IpAddr>,
    usernames: Table<String>,
}

impl Throttle {
    /// An empty throttle with the given limits.
    pub fn new(config: ThrottleConfig) -> Self {
        Self { config, addresses: Table::default(), usernames: Table::default() }
    }

    /// Whether a login from `ip` as `username` (`None`: anonymous) may be tried now.
    ///
    /// When both the address and the username are held back, the longer wait is returned.
    pub fn check(&self, ip: IpAddr, username: Option<&str>, now: Instant) -> Result<(), RetryAfter> {
        let ip = address_key(ip);
        let by_address = self.addresses.entries.get(&ip).and_then(|entry| self.wait(entry, now));
        let by_username = username
            .and_then(|name| self.usernames.entries.get(name))
            .filter(|entry| !entry.trusted.contains(&ip))
            .and_then(|entry| self.wait(entry, now));
        match by_address.max(by_username) {
            Some(wait) => Err(RetryAfter(wait)),
            None => Ok(()),
        }
    }

    /// Counts a failed login (wrong password, unknown user) from `ip` as `username`.
    pub fn record_failure(&mut self, ip: IpAddr, username: Option<&str>, now: Instant) {
        let config = &self.config;
        self.addresses.touch(config, address_key(ip), now).fail(config, now);
        if let Some(name) = username {
            self.usernames.touch(config, name.to_owned(), now).fail(config, now);
        }
    }

    /// Records a successful login: resets the username's failures and trusts `ip` for that username. The
    /// address's own failures stay (see the module documentation).
    pub fn record_success(&mut self, ip: IpAddr, username: Option<&str>, now: Instant) {
        let Some(name) = username else { return };
        let config = &self.config;
        let ip = address_key(ip);
        let entry = self.usernames.touch(config, name.to_owned(), now);
        entry.failures = 0;
        entry.last_failure = None;
        entry.trusted.retain(|trusted| *trusted != ip);
        entry.trusted.push(ip);
        if entry.trusted.len() > config.trusted_per_user {
            entry.trusted.remove(0);
        }
    }

    /// How many addresses are tracked, for metrics and tests.
    pub fn tracked_addresses(&self) -> usize {
        self.addresses.entries.len()
    }

    /// How many usernames are tracked, for metrics and tests.
    pub fn tracked_usernames(&self) -> usize {
        self.usernames.entries.len()
    }

    /// How long `entry` is still held back, if at all.
    fn wait(&self, entry: &Entry, now: Instant) -> Option<Duration> {
        let last = entry.live_failure(&self.config, now)?;
        let until = last.checked_add(delay(&self.config, entry.failures))?;
        until.checked_duration_since(now).filter(|wait| !wait.is_zero())
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(ThrottleConfig::default())
    }
}

/// The hold-back after `failures` failures: none up to `free_failures`, then doubling up to `max_delay`.
fn delay(config: &ThrottleConfig, failures: u32) -> Duration {
    let Some(beyond) = failures.checked_sub(config.free_failures).filter(|n| *n > 0) else {
        return Duration::ZERO;
    };
    // 2^(beyond - 1), saturating well before overflow: 2^31 seconds is far beyond any sensible cap.
    let factor = 1u32.checked_shl(beyond.saturating_sub(1).min(31)).unwrap_or(u32::MAX);
    config.base_delay.saturating_mul(factor).min(config.max_delay)
}

/// Addresses are counted per host: IPv4 as is (also when mapped into IPv6), IPv6 per /64.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        },
    }
}

#[derive(Debug, Clone)]
struct Table<K> {
    entries: HashMap<K, Entry>,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Self { entries: HashMap::new() }
    }
}

impl<K: Hash + Eq + Clone> Table<K> {
    /// The entry for `key`, created (making room if the table is full) if absent, marked as seen `now`.
    fn touch(&mut self, config: &ThrottleConfig, key: K, now: Instant) -> &mut Entry {
        if !self.entries.contains_key(&key) && self.entries.len() >= config.max_tracked {
            self.make_room(config, now);
        }
        let entry = self.entries.entry(key).or_insert_with(|| Entry::new(now));
        entry.last_seen = now;
        entry
    }

    fn make_room(&mut self, config: &ThrottleConfig, now: Instant) {
        self.entries
            .retain(|_, entry| entry.live_failure(config, now).is_some() || !entry.trusted.is_empty());
        while self.entries.len() >= config.max_tracked.max(1) {
            let oldest =
                self.entries.iter().min_by_key(|(_, entry)| entry.last_seen).map(|(key, _)| key.clone());
            let Some(oldest) = oldest else { return };
            self.entries.remove(&oldest);
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    last_failure: Option<Instant>,
    /// Last failure or success: what eviction goes by.
    last_seen: Instant,
    /// Usernames only: addresses that logged in successfully as this user, oldest first.
    trusted: Vec<IpAddr>,
}

impl Entry {
    fn new(now: Instant) -> Self {
        Self { failures: 0, last_failure: None, last_seen: now, trusted: Vec::new() }
    }

    /// The last failure, unless it is old enough to be forgotten.
    fn live_failure(&self, config: &ThrottleConfig, now: Instant) -> Option<Instant> {
        self.last_failure.filter(|last| now.saturating_duration_since(*last) < config.forget_after)
    }

    fn fail(&mut self, config: &ThrottleConfig, now: Instant) {
        if self.live_failure(config, now).is_none() {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        self.last_failure = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn fail_n(throttle: &mut Throttle, n: u32, from: IpAddr, user: Option<&str>, now: Instant) {
        for _ in 0..n {
            throttle.record_failure(from, user, now);
        }
    }

    #[test]
    fn delays_double_and_are_capped() {
        let config = ThrottleConfig::default();
        let expected = [0, 0, 0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60];
        for (failures, secs) in expected.iter().enumerate() {
            assert_eq!(delay(&config, failures as u32), Duration::from_secs(*secs), "{failures} failures");
        }
        assert_eq!(delay(&config, u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn back_off_after_five_failures() {
        let mut throttle = Throttle::default();
        let t0 = Instant::now();
        let attacker = ip("203.0.113.7");
        for i in 0..5 {
            assert_eq!(throttle.check(attacker, Some("plc1"), t0), Ok(()), "attempt {i}");
            throttle.record_failure(attacker, Some("plc1"), t0);
        }
        // Five failures are free...
        assert_eq!(throttle.check(attacker, Some("plc1"), t0), Ok(()));
        // ...the sixth holds back for 1 s, the seventh 2 s, the eighth 4 s.
        throttle.record_failure(attacker, Some("plc1"), t0);
        assert_eq!(throttle.check(attacker, Some("plc1"), t0), Err(RetryAfter(SEC)));
        assert_eq!(throttle.check(attacker, Some("plc1"), t0 + SEC / 2), Err(RetryAfter(SEC / 2)));
        assert_eq!(throttle.check(attacker, Some("plc1"), t0 + SEC), Ok(()));
        throttle.record_failure(attacker, Some("plc1"), t0 + SEC);
        assert_eq!(throttle.check(attacker, Some("plc1"), t0 + SEC), Err(RetryAfter(2 * SEC)));
        throttle.record_failure(attacker, Some("plc1"), t0 + 3 * SEC);
        assert_eq!(throttle.check(attacker, Some("plc1"), t0 + 3 * SEC), Err(RetryAfter(4 * SEC)));
        // Never more than 60 s.
        let later = t0 + 10 * SEC;
        fail_n(&mut throttle, 50, attacker, Some("plc1"), later);
        assert_eq!(throttle.check(attacker, Some("plc1"), later), Err(RetryAfter(60 * SEC)));
        assert_eq!(throttle.check(attacker, Some("plc1"), later + 60 * SEC), Ok(()));
        assert_eq!(RetryAfter(SEC / 2).to_string(), "too many failed logins; retry after 1 s");
    }

    #[test]
    fn failures_are_forgotten_after_a_quiet_period() {
        let mut throttle = Throttle::default();
        let t0 = Instant::now();
        let from = ip("192.0.2.1");
        fail_n(&mut throttle, 12, from, Some("u"), t0);
        assert!(throttle.check(from, Some("u"), t0).is_err());
        let quiet = t0 + 15 * 60 * SEC;
        assert_eq!(throttle.check(from, Some("u"), quiet), Ok(()));
        // The count starts again from zero: one more failure is free.
        throttle.record_failure(from, Some("u"), quiet);
        assert_eq!(throttle.check(from, Some("u"), quiet), Ok(()));
        fail_n(&mut throttle, 5, from, Some("u"), quiet);
        assert_eq!(throttle.check(from, Some("u"), quiet), Err(RetryAfter(SEC)));
    }

    #[test]
    fn per_address_failures_do_not_block_other_addresses() {
        let mut throttle = Throttle::default();
        let t0 = Instant::now();
        let attacker = ip("203.0.113.7");
        // The attacker guesses at many usernames from one address.
        for n in 0..20 {
            throttle.record_failure(attacker, Some(&format!("guess{n}")), t0);
        }
        assert!(throttle.check(attacker, Some("plc1"), t0).is_err());
        assert!(throttle.check(attacker, None, t0).is_err());
        assert_eq!(throttle.check(ip("10.0.0.5"), Some("plc1"), t0), Ok(()));
        assert_eq!(throttle.check(ip("10.0.0.5"), Some("guess3"), t0), Ok(()));
    }

    #[test]
    fn per_username_delay_spares_trusted_addresses() {
        let mut throttle = Throttle::default();
        let t0 = Instant::now();
        let device = ip("10.0.0.5");
        throttle.record_success(device, Some("plc1"), t0);
        // A distributed attack on plc1's password: one failure from each of many addresses.
        for n in 0..30u8 {
            throttle.record_failure(IpAddr::from([198, 51, 100, n]), Some("plc1"), t0);
        }
        // The username is held back for new addresses, at most 60 s...
        assert_eq!(throttle.check(ip("198.51.100.200"), Some("plc1"), t0), Err(RetryAfter(60 * SEC)));
        // ...but the device that has logged in before is not.
        assert_eq!(throttle.check(device, Some("plc1"), t0), Ok(()));
        // Its success resets the username's counter for everyone.
        throttle.record_success(device, Some("plc1"), t0);
        assert_eq!(throttle.check(ip("198.51.100.200"), Some("plc1"), t0), Ok(()));
    }

    #[test]
    fn success_does_not_reset_the_address() {
        let mut throttle = Throttle::default();
        let t0 = Instant::now();
        let attacker = ip("203.0.113.7");
        fail_n(&mut throttle, 8, attacker, Some("victim"), t0);
        throttle.record_success(attacker, Some("own-account"), t0);
        assert!(throttle.check(attacker, Some("victim"), t0).is_err());
        assert!(throttle.check(attacker, Some("own-account"), t0).is_err());
        // Anonymous success changes nothing and tracks nothing.
        throttle.record_success(attacker, None, t0);
        assert_eq!(throttle.tracked_usernames(), 2);
    }

    #[test]
    fn trusted_addresses_are_bounded() {
        let mut throttle = Throttle::default();
        let t0 = Instant::now();
        for n in 1..=6u8 {
            throttle.record_success(IpAddr::from([10, 0, 0, n]), Some("u"), t0);
        }
        fail_n(&mut throttle, 12, ip("203.0.113.7"), Some("u"), t0);
        // The four most recent are trusted, the two oldest no longer.
        for n in 3..=6u8 {
            assert_eq!(throttle.check(IpAddr::from([10, 0, 0, n]), Some("u"), t0), Ok(()), "10.0.0.{n}");
        }
        for n in 1..=2u8 {
            assert!(throttle.check(IpAddr::from([10, 0, 0, n]), Some("u"), t0).is_err(), "10.0.0.{n}");
        }
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let mut throttle = Throttle::default();
        let t0 = Instant::now();
        for n in 0..8u16 {
            throttle.record_failure(IpAddr::from([0x2001, 0xdb8, 0, 1, n, n, n, n]), None, t0);
        }
        assert!(throttle.check(ip("2001:db8:0:1::ffff"), None, t0).is_err());
        assert_eq!(throttle.check(ip("2001:db8:0:2::1"), None, t0), Ok(()));
        assert_eq!(throttle.tracked_addresses(), 1);
        fail_n(&mut throttle, 8, ip("::ffff:192.0.2.9"), None, t0);
        assert!(throttle.check(ip("192.0.2.9"), None, t0).is_err());
    }

    #[test]
    fn memory_is_bounded() {
        let config = ThrottleConfig { max_tracked: 100, ..ThrottleConfig::default() };
        let mut throttle = Throttle::new(config);
        let t0 = Instant::now();
        let persistent = ip("203.0.113.7");
        // An attacker cycling through addresses and usernames, one failure each.
        for n in 0..10_000u32 {
            let now = t0 + Duration::from_millis(u64::from(n));
            throttle.record_failure(IpAddr::from(n.to_be_bytes()), Some(&format!("user{n}")), now);
            if n % 10 == 0 {
                throttle.record_failure(persistent, None, now);
            }
        }
        assert!(throttle.tracked_addresses() <= 100);
        assert!(throttle.tracked_usernames() <= 100);
        // Recently seen keys survive: the persistent attacker is still held back.
        assert!(throttle.check(persistent, None, t0 + Duration::from_millis(10_000)).is_err());
        // Forgotten entries go first when room is needed.
        let mut throttle = Throttle::new(ThrottleConfig { max_tracked: 2, ..ThrottleConfig::default() });
        throttle.record_failure(ip("192.0.2.1"), None, t0);
        fail_n(&mut throttle, 9, ip("192.0.2.2"), None, t0 + 20 * 60 * SEC);
        throttle.record_failure(ip("192.0.2.3"), None, t0 + 20 * 60 * SEC);
        assert_eq!(throttle.tracked_addresses(), 2);
        assert!(throttle.check(ip("192.0.2.2"), None, t0 + 20 * 60 * SEC).is_err());
    }
}
