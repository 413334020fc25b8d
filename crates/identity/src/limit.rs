//! How often Certify may be asked, as pure decisions on a clock passed in:
//! per client (keyed by what its proof proved, never by a ServiceAccount
//! every replica shares), a global ceiling on issuance and on token
//! verification, and a budget of refused requests per peer address.
//!
//! Each limit is GCRA (a token bucket kept as one instant per key). Tables
//! have a cap: a bucket that has refilled is the same as no bucket and is
//! dropped first, so a flood of distinct keys cannot grow memory. Keys from
//! unverified input are only looked up, never inserted.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use pki::Identity;

/// A rate with a burst: `count` per `period`, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

impl Rate {
    /// Time between two requests at the steady rate.
    fn interval(&self) -> Duration {
        self.period / self.count.max(1)
    }

    /// How far ahead of now the bucket may run: the burst less one request.
    fn tolerance(&self) -> Duration {
        self.interval() * self.burst.max(1).saturating_sub(1)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.period.as_secs() {
            1 => write!(f, "{}/s:{}", self.count, self.burst),
            60 => write!(f, "{}/m:{}", self.count, self.burst),
            3600 => write!(f, "{}/h:{}", self.count, self.burst),
            secs => write!(f, "{} per {secs}s:{}", self.count, self.burst),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "rate {0:?}: expected COUNT/UNIT:BURST with UNIT s, m or h and COUNT, BURST at least 1 (e.g. 6/m:3)"
)]
pub struct RateError(String);

impl FromStr for Rate {
    type Err = RateError;
    fn from_str(s: &str) -> Result<Self, RateError> {
        let bad = || RateError(s.to_string());
        let (rate, burst) = s.split_once(':').ok_or_else(bad)?;
        let (count, unit) = rate.split_once('/').ok_or_else(bad)?;
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let burst: u32 = burst.trim().parse().map_err(|_| bad())?;
        if count == 0 || burst == 0 {
            return Err(bad());
        }
        Ok(Self {
            count,
            period,
            burst,
        })
    }
}

/// The limits, as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertifyLimits {
    /// Per client key (renewing identity, join token, pod).
    pub per_client: Rate,
    /// All issuance together; separately, all token verifications.
    pub global: Rate,
    /// Refused requests per peer address before it is refused outright.
    pub refusals_per_peer: Rate,
    /// Keys held at once in each table.
    pub max_keys: usize,
}

impl fmt::Display for CertifyLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "per client {}, global {}, refusals per peer address {}, at most {} keys",
            self.per_client, self.global, self.refusals_per_peer, self.max_keys
        )
    }
}

/// Who a Certify caller is for rate limiting: what its proof proved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// Renewal by a valid leaf: the identity it names, from one address
    /// (every replica of a Deployment shares the identity, so the identity
    /// alone would make a fleet wait on one bucket after an issuer change).
    Renewal(Identity, Option<std::net::IpAddr>),
    /// First issuance with a join token: the token's id.
    JoinToken(String),
    /// A Kubernetes token bound to a pod (`ns/name`): each replica its own.
    Pod(String),
    /// A Kubernetes token bound to no pod: the token itself (SHA-256).
    Token(String),
}

/// What a limit is keyed by, as metrics and messages name it (few values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Renewal,
    JoinToken,
    Pod,
    Token,
    /// Refused requests from one peer address.
    Peer,
    /// Issuance from all clients together.
    Global,
    /// Token verifications from all clients together.
    GlobalVerify,
}

impl KeyKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::Renewal => "renewal",
            Self::JoinToken => "join_token",
            Self::Pod => "pod",
            Self::Token => "token",
            Self::Peer => "peer",
            Self::Global => "global",
            Self::GlobalVerify => "global_verify",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::Renewal => "renewals of this identity from this address",
            Self::JoinToken => "this join token",
            Self::Pod => "this pod",
            Self::Token => "this token",
            Self::Peer => "refused requests from your address",
            Self::Global => "certificates issued by this control plane",
            Self::GlobalVerify => "token verifications by this control plane",
        }
    }
}

impl ClientKey {
    pub fn kind(&self) -> KeyKind {
        match self {
            Self::Renewal(..) => KeyKind::Renewal,
            Self::JoinToken(_) => KeyKind::JoinToken,
            Self::Pod(_) => KeyKind::Pod,
            Self::Token(_) => KeyKind::Token,
        }
    }
}

/// A refusal: which limit, its rate, and when a retry may succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    pub kind: KeyKind,
    pub rate: Rate,
    pub retry_after: Duration,
}

impl Limited {
    /// Whole seconds to wait, at least one.
    pub fn retry_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }
}

impl fmt::Display for Limited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.rate;
        let unit = r.to_string();
        let unit = unit.split(':').next().unwrap_or_default();
        write!(
            f,
            "Certify rate limit reached for {} (limit {unit}, burst {}); keep the certificate you have and retry in {}s",
            self.kind.describe(),
            r.burst,
            self.retry_secs()
        )
    }
}

impl std::error::Error for Limited {}

/// One bucket: the theoretical arrival time of the next request.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tat: Instant,
}

impl Bucket {
    /// How long until a request would conform; zero if it conforms now.
    fn wait(tat: Option<Instant>, rate: &Rate, now: Instant) -> Duration {
        let tat = tat.unwrap_or(now).max(now);
        (tat - now).saturating_sub(rate.tolerance())
    }

    /// The bucket after one more request (which must conform).
    fn after(tat: Option<Instant>, rate: &Rate, now: Instant) -> Self {
        Self {
            tat: tat.unwrap_or(now).max(now) + rate.interval(),
        }
    }
}

/// Buckets by key, at most `cap` of them.
#[derive(Debug)]
struct Table<K> {
    buckets: HashMap<K, Bucket>,
    cap: usize,
}

impl<K: Eq + Hash + Clone> Table<K> {
    fn new(cap: usize) -> Self {
        Self {
            buckets: HashMap::new(),
            cap: cap.max(1),
        }
    }

    fn wait(&self, key: &K, rate: &Rate, now: Instant) -> Duration {
        Bucket::wait(self.buckets.get(key).map(|b| b.tat), rate, now)
    }

    /// Counts one request for `key` (which must conform), making room first.
    fn take(&mut self, key: &K, rate: &Rate, now: Instant) {
        let tat = self.buckets.get(key).map(|b| b.tat);
        if tat.is_none() && self.buckets.len() >= self.cap {
            // A refilled bucket is the same as none: dropping it loses nothing.
            self.buckets.retain(|_, b| b.tat > now);
            if self.buckets.len() >= self.cap {
                // Still full: the key closest to refilled goes.
                let oldest = self
                    .buckets
                    .iter()
                    .min_by_key(|(_, b)| b.tat)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.buckets.remove(&k);
                }
            }
        }
        self.buckets
            .insert(key.clone(), Bucket::after(tat, rate, now));
    }

    fn len(&self) -> usize {
        self.buckets.len()
    }
}

/// Every Certify limit's state.
#[derive(Debug)]
pub struct Limiter {
    limits: CertifyLimits,
    clients: Table<ClientKey>,
    peers: Table<IpAddr>,
    issue: Option<Instant>,
    verify: Option<Instant>,
}

impl Limiter {
    pub fn new(limits: CertifyLimits) -> Self {
        Self {
            limits,
            clients: Table::new(limits.max_keys),
            peers: Table::new(limits.max_keys),
            issue: None,
            verify: None,
        }
    }

    pub fn limits(&self) -> &CertifyLimits {
        &self.limits
    }

    fn refuse(kind: KeyKind, rate: Rate, wait: Duration) -> Result<(), Limited> {
        if wait.is_zero() {
            Ok(())
        } else {
            Err(Limited {
                kind,
                rate,
                retry_after: wait,
            })
        }
    }

    /// Before any work: a peer whose refusal budget is spent is refused.
    /// Otherwise its request holds one unit of the budget until settled
    /// (so calls in flight at once cannot all slip through), given back by
    /// [`Self::refund_peer`] unless it is refused for being wrong.
    pub fn admit_peer(&mut self, peer: IpAddr, now: Instant) -> Result<(), Limited> {
        let rate = self.limits.refusals_per_peer;
        Self::refuse(KeyKind::Peer, rate, self.peers.wait(&peer, &rate, now))?;
        self.peers.take(&peer, &rate, now);
        Ok(())
    }

    /// The request admitted for `peer` was not a wrong one: its unit back.
    pub fn refund_peer(&mut self, peer: IpAddr) {
        let interval = self.limits.refusals_per_peer.interval();
        if let Some(b) = self.peers.buckets.get_mut(&peer) {
            b.tat = b.tat.checked_sub(interval).unwrap_or(b.tat);
        }
    }

    /// Before verifying a proof: whether the key the request claims (not yet
    /// verified) has run out. Looks up only; never inserts.
    pub fn check_claimed(&self, key: &ClientKey, now: Instant) -> Result<(), Limited> {
        let rate = self.limits.per_client;
        Self::refuse(key.kind(), rate, self.clients.wait(key, &rate, now))
    }

    /// Before a token is verified (which may ask the API server): the global
    /// verification ceiling.
    pub fn admit_verify(&mut self, now: Instant) -> Result<(), Limited> {
        let rate = self.limits.global;
        Self::refuse(
            KeyKind::GlobalVerify,
            rate,
            Bucket::wait(self.verify, &rate, now),
        )?;
        self.verify = Some(Bucket::after(self.verify, &rate, now).tat);
        Ok(())
    }

    /// Before signing for a verified client: its own limit and the global
    /// one, both taken or neither.
    pub fn admit_issue(&mut self, key: &ClientKey, now: Instant) -> Result<(), Limited> {
        let (per, global) = (self.limits.per_client, self.limits.global);
        Self::refuse(key.kind(), per, self.clients.wait(key, &per, now))?;
        Self::refuse(
            KeyKind::Global,
            global,
            Bucket::wait(self.issue, &global, now),
        )?;
        self.clients.take(key, &per, now);
        self.issue = Some(Bucket::after(self.issue, &global, now).tat);
        Ok(())
    }

    /// Keys held (clients, peers): bounded by `max_keys` each.
    pub fn held(&self) -> (usize, usize) {
        (self.clients.len(), self.peers.len())
    }
}

#[cfg(test)]
#[path = "limit_tests.rs"]
mod tests;
