//! Checking remote callers' bearer tokens against the committed token hash
//! (`carapace_model::settings::Api::token_check`) without making every
//! request slow and without letting failed attempts burn the CPU.
//!
//! - A token that verified against the current salted hash is remembered,
//!   in memory only, as its SHA-256 (compared in constant time), keyed on
//!   the stored hash: setting a new token forgets it. Later requests with
//!   it cost a SHA-256, not an argon2id run.
//! - At most [`MAX_CONCURRENT_VERIFICATIONS`] argon2id runs at a time, on
//!   blocking threads; a request that cannot get a turn within
//!   [`VERIFY_WAIT`] is answered "busy" rather than queued for ever.
//! - A presented token that no setting could ever have accepted (wrong
//!   length or characters) is refused without hashing.
//!
//! The verifier holds its own copy of the committed `api` settings, updated
//! by the commit handler, so checking a token never waits for the lock that
//! guards the settings store (which the Unix socket's requests take too).

use carapace_model::settings::{check_token, Api, TokenCheck};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// argon2id runs at once: two keep one core of a small node free for the
/// API and the agents, and take 2 × 19 MiB of memory at most.
pub const MAX_CONCURRENT_VERIFICATIONS: usize = 2;
/// How long a request waits for a verification turn before it is answered
/// 503 (a few runs' worth even under emulation, far below client timeouts).
pub const VERIFY_WAIT: Duration = Duration::from_secs(5);

/// The outcome of a token check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Refused,
    /// Too many verifications are running: try again shortly.
    Busy,
}

/// A token that verified: what it verified against, and its SHA-256.
struct Verified {
    stored: String,
    digest: [u8; 32],
}

/// Checks bearer tokens; one per API, shared by its connections.
pub struct TokenVerifier {
    api: Mutex<Api>,
    verified: Mutex<Option<Verified>>,
    turns: Arc<Semaphore>,
    wait: Duration,
    slow_runs: AtomicUsize,
    running: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every value these hold is whole at every step: a poisoned lock is
    // still good.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenVerifier {
    /// A verifier for the committed `api` settings, with the default bounds.
    pub fn new(api: &Api) -> TokenVerifier {
        TokenVerifier::with_bounds(api, MAX_CONCURRENT_VERIFICATIONS, VERIFY_WAIT)
    }

    /// A verifier running at most `concurrent` slow verifications at once,
    /// each request waiting at most `wait` for its turn.
    pub fn with_bounds(api: &Api, concurrent: usize, wait: Duration) -> TokenVerifier {
        TokenVerifier {
            api: Mutex::new(api.clone()),
            verified: Mutex::new(None),
            turns: Arc::new(Semaphore::new(concurrent)),
            wait,
            slow_runs: AtomicUsize::new(0),
            running: Arc::new(AtomicUsize::new(0)),
            peak: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The committed `api` settings changed: check against these from now on.
    pub fn set(&self, api: &Api) {
        *lock(&self.api) = api.clone();
    }

    /// How many slow (argon2id) verifications have run.
    pub fn slow_verifications(&self) -> usize {
        self.slow_runs.load(Ordering::Relaxed)
    }

    /// The most slow verifications that ever ran at once.
    pub fn peak_concurrent(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Whether `presented` (the bearer token, if any) may call the API.
    pub async fn check(&self, presented: Option<&str>) -> Verdict {
        let Some(token) = presented.filter(|t| check_token(t).is_ok()) else {
            return Verdict::Refused;
        };
        let api = lock(&self.api).clone();
        let check = api.token_check();
        let Some(stored) = check.stored().map(str::to_owned) else {
            return Verdict::Refused;
        };
        let digest = sha256(token);
        let remembered = lock(&self.verified)
            .as_ref()
            .is_some_and(|v| v.stored == stored && bool::from(v.digest.ct_eq(&digest)));
        if remembered {
            return Verdict::Allowed;
        }
        let ok = match check {
            TokenCheck::None => false,
            // An older file's SHA-256 is as cheap to check as the cache.
            TokenCheck::Sha256(_) => check.verify(token),
            TokenCheck::Salted(hash) => {
                let turn = tokio::time::timeout(self.wait, self.turns.clone().acquire_owned());
                let Ok(Ok(turn)) = turn.await else {
                    return Verdict::Busy;
                };
                self.slow_runs.fetch_add(1, Ordering::Relaxed);
                let hash = hash.clone();
                let token = token.to_owned();
                let (running, peak) = (self.running.clone(), self.peak.clone());
                // The turn moves into the blocking task: it is given back
                // when the run ends, even if the request is dropped first.
                let run = tokio::task::spawn_blocking(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let ok = hash.verify(&token);
                    running.fetch_sub(1, Ordering::SeqCst);
                    drop(turn);
                    ok
                });
                run.await.unwrap_or(false)
            }
        };
        if !ok {
            return Verdict::Refused;
        }
        *lock(&self.verified) = Some(Verified { stored, digest });
        Verdict::Allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use carapace_model::settings::{SaltedTokenHash, TokenHash};

    const TOKEN: &str = "verifier-token-0123456789";

    fn salted(token: &str) -> Api {
        Api {
            token_hash: Some(SaltedTokenHash::of(token).expect("hashed")),
            token_sha256: None,
        }
    }

    #[tokio::test]
    async fn a_verified_token_is_remembered_until_the_hash_changes() {
        let verifier = TokenVerifier::new(&salted(TOKEN));
        assert_eq!(verifier.check(Some(TOKEN)).await, Verdict::Allowed);
        assert_eq!(verifier.check(Some(TOKEN)).await, Verdict::Allowed);
        assert_eq!(
            verifier.slow_verifications(),
            1,
            "the second was remembered"
        );
        // A wrong token is never remembered, and costs a run each time.
        let wrong = "verifier-token-0123456780";
        assert_eq!(verifier.check(Some(wrong)).await, Verdict::Refused);
        assert_eq!(verifier.check(Some(wrong)).await, Verdict::Refused);
        assert_eq!(verifier.slow_verifications(), 3);
        assert_eq!(verifier.check(Some(TOKEN)).await, Verdict::Allowed);
        assert_eq!(verifier.slow_verifications(), 3, "still remembered");
        // A new token: the old one is forgotten at once.
        verifier.set(&salted("another-token-0123456789"));
        assert_eq!(verifier.check(Some(TOKEN)).await, Verdict::Refused);
        assert_eq!(verifier.slow_verifications(), 4);
        // Even the same token under a new salt is verified afresh.
        verifier.set(&salted(TOKEN));
        assert_eq!(verifier.check(Some(TOKEN)).await, Verdict::Allowed);
        assert_eq!(verifier.slow_verifications(), 5);
        verifier.set(&Api::default());
        assert_eq!(verifier.check(Some(TOKEN)).await, Verdict::Refused);
    }

    #[tokio::test]
    async fn impossible_tokens_and_no_token_cost_nothing() {
        let verifier = TokenVerifier::new(&salted(TOKEN));
        for presented in [None, Some(""), Some("short"), Some("has a space in it!!")] {
            assert_eq!(verifier.check(presented).await, Verdict::Refused);
        }
        let long = "x".repeat(100_000);
        assert_eq!(verifier.check(Some(&long)).await, Verdict::Refused);
        assert_eq!(verifier.slow_verifications(), 0);
    }

    #[tokio::test]
    async fn an_older_versions_sha256_still_authenticates() {
        let api = Api {
            token_hash: None,
            token_sha256: Some(TokenHash::of(TOKEN)),
        };
        let verifier = TokenVerifier::new(&api);
        assert_eq!(verifier.check(Some(TOKEN)).await, Verdict::Allowed);
        assert_eq!(
            verifier.check(Some("verifier-token-000000000")).await,
            Verdict::Refused
        );
        assert_eq!(verifier.slow_verifications(), 0);
    }

    #[tokio::test]
    async fn failed_attempts_run_at_most_the_bound_at_once_and_then_are_told_busy() {
        let verifier = Arc::new(TokenVerifier::with_bounds(
            &salted(TOKEN),
            2,
            Duration::from_millis(1),
        ));
        let attempts: Vec<_> = (0..8)
            .map(|n| {
                let v = verifier.clone();
                tokio::spawn(async move { v.check(Some(&format!("wrong-token-{n:010}"))).await })
            })
            .collect();
        let mut verdicts = Vec::new();
        for a in attempts {
            verdicts.push(a.await.expect("joined"));
        }
        assert!(
            verifier.peak_concurrent() <= 2,
            "{}",
            verifier.peak_concurrent()
        );
        assert!(verdicts.iter().all(|v| *v != Verdict::Allowed));
        assert!(
            verdicts.contains(&Verdict::Busy),
            "no queue: those without a turn are told busy: {verdicts:?}"
        );
        assert_eq!(
            verifier.slow_verifications(),
            verdicts.iter().filter(|v| **v == Verdict::Refused).count()
        );
    }
}
