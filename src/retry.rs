//! Bounded retries of transient failures: full-jitter exponential backoff,
//! never past the time the invocation has left.
//!
//! What is transient is the caller's to say ([`Retryable`]); this module only
//! decides when to try again and logs one event per retry.

use std::fmt::Display;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio::time::Instant;

/// Time kept free after the query's own timeout for the PostgreSQL write.
pub const WRITE_MARGIN: Duration = Duration::from_secs(5);

/// What kind of failure an error is; decides whether it is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// May succeed if tried again (connection refused or reset, answer cut short,
    /// server overloaded or restarting).
    Transient,
    /// Will fail again (wrong query for the table, access denied, undecodable answer).
    Permanent,
    /// The query's own time limit, or the invocation's deadline: not retried either.
    Timeout,
}

impl Class {
    /// The name used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Transient => "transient",
            Class::Permanent => "permanent",
            Class::Timeout => "timeout",
        }
    }
}

/// An error [`run`] can classify, and build when the deadline cuts an attempt short.
pub trait Retryable: Sized + Display {
    /// Whether trying again may help.
    fn class(&self) -> Class;
    /// The error of an attempt stopped because the invocation's time ran out.
    fn out_of_time(allowed: Duration) -> Self;
}

/// How many attempts, how long to wait between them, and how much time to keep free.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Ceiling of the first pause; doubles with each retry.
    pub base: Duration,
    /// Ceiling of any pause.
    pub cap: Duration,
    /// Time kept free before the deadline (e.g. to store a failure stamp).
    pub reserve: Duration,
}

impl Policy {
    /// `attempts` attempts, pauses of at most 0.2 s, 0.4 s, ... up to 5 s.
    pub fn new(attempts: u32, reserve: Duration) -> Self {
        Self {
            attempts: attempts.max(1),
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
            reserve,
        }
    }

    /// The pause after failed attempt `made` (1-based): "full jitter", uniform in
    /// `[0, min(cap, base * 2^(made-1))]`, so that many clients failing together
    /// do not come back together. `random` is any uniformly random number.
    pub fn backoff(&self, made: u32, random: u64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << (made.saturating_sub(1)).min(20))
            .min(self.cap);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(if nanos == 0 { 0 } else { random % (nanos + 1) })
    }

    /// Whether to try again after attempt `made` failed with `class`, pausing
    /// `pause` first: only transient failures, attempts left, and the pause plus
    /// the reserve fit before `deadline` (the next attempt gets what remains).
    pub fn may_retry(
        &self,
        made: u32,
        class: Class,
        pause: Duration,
        now: Instant,
        deadline: Option<Instant>,
    ) -> bool {
        class == Class::Transient
            && made < self.attempts
            && deadline.is_none_or(|d| now + pause + self.reserve < d)
    }
}

/// A failure after every allowed attempt.
#[derive(Debug)]
pub struct Failure<E> {
    /// The last attempt's error.
    pub error: E,
    /// Its class.
    pub class: Class,
    /// Attempts made.
    pub attempts: u32,
}

/// Runs `attempt` until it succeeds, fails for good, runs out of attempts or of
/// time. Each attempt ends at `deadline - reserve` at the latest. Logs one
/// `warn` event per retry, naming `operation`, the attempt and the cause.
/// Returns the value and the attempts made.
pub async fn run<T, E, F, Fut>(
    policy: &Policy,
    deadline: Option<Instant>,
    operation: &str,
    mut attempt: F,
) -> Result<(T, u32), Failure<E>>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut made = 0;
    loop {
        made += 1;
        let result = match deadline {
            None => attempt().await,
            Some(deadline) => {
                let until = deadline
                    .checked_sub(policy.reserve)
                    .unwrap_or_else(Instant::now);
                let allowed = until.saturating_duration_since(Instant::now());
                tokio::time::timeout_at(until, attempt())
                    .await
                    .unwrap_or_else(|_| Err(E::out_of_time(allowed)))
            }
        };
        let error = match result {
            Ok(value) => return Ok((value, made)),
            Err(error) => error,
        };
        let class = error.class();
        let pause = policy.backoff(made, random());
        if !policy.may_retry(made, class, pause, Instant::now(), deadline) {
            return Err(Failure {
                error,
                class,
                attempts: made,
            });
        }
        tracing::warn!(
            operation,
            attempt = made + 1,
            attempts = policy.attempts,
            backoff_ms = pause.as_millis() as u64,
            class = class.as_str(),
            cause = %error,
            "retrying"
        );
        tokio::time::sleep(pause).await;
    }
}

/// A random number for the jitter: the standard library's randomly keyed hasher
/// is enough (no RNG dependency for a pause length).
fn random() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    hasher.write_u128(now.map_or(0, |d| d.as_nanos()));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn backoff_is_full_jitter_below_a_doubling_capped_ceiling() {
        let p = Policy::new(3, Duration::ZERO);
        assert_eq!(p.backoff(1, 0), Duration::ZERO);
        assert_eq!(
            p.backoff(1, u64::MAX),
            Duration::from_nanos(u64::MAX % 200_000_001)
        );
        for random in [1, 7, 123_456_789, u64::MAX / 3] {
            assert!(p.backoff(1, random) <= Duration::from_millis(200));
            assert!(p.backoff(2, random) <= Duration::from_millis(400));
            assert!(p.backoff(30, random) <= Duration::from_secs(5));
        }
        // The ceiling itself is reachable.
        assert_eq!(p.backoff(2, 400_000_000), Duration::from_millis(400));
        assert_eq!(p.backoff(9, 5_000_000_000), Duration::from_secs(5));
    }

    #[test]
    fn retries_only_transient_failures_within_attempts_and_deadline() {
        let p = Policy::new(3, Duration::from_secs(5));
        let now = Instant::now();
        let pause = Duration::from_millis(100);
        assert!(p.may_retry(1, Class::Transient, pause, now, None));
        assert!(p.may_retry(2, Class::Transient, pause, now, None));
        assert!(!p.may_retry(3, Class::Transient, pause, now, None));
        assert!(!p.may_retry(1, Class::Permanent, pause, now, None));
        assert!(!p.may_retry(1, Class::Timeout, pause, now, None));
        let deadline = now + Duration::from_secs(6);
        assert!(p.may_retry(1, Class::Transient, pause, now, Some(deadline)));
        // The pause plus the reserve must end before the deadline.
        assert!(!p.may_retry(
            1,
            Class::Transient,
            Duration::from_secs(1),
            now,
            Some(deadline)
        ));
        assert!(!Policy::new(1, Duration::ZERO).may_retry(1, Class::Transient, pause, now, None));
    }

    #[derive(Debug, PartialEq)]
    enum TestError {
        Flaky,
        Broken,
        Late,
    }

    impl Display for TestError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl Retryable for TestError {
        fn class(&self) -> Class {
            match self {
                TestError::Flaky => Class::Transient,
                TestError::Broken => Class::Permanent,
                TestError::Late => Class::Timeout,
            }
        }
        fn out_of_time(_: Duration) -> Self {
            TestError::Late
        }
    }

    fn quick(attempts: u32) -> Policy {
        Policy {
            base: Duration::from_millis(1),
            ..Policy::new(attempts, Duration::ZERO)
        }
    }

    #[tokio::test]
    async fn runs_until_success_or_a_permanent_failure() {
        let calls = AtomicU32::new(0);
        let ok = run(&quick(3), None, "test", || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(TestError::Flaky),
                n => Ok(n),
            }
        })
        .await
        .unwrap();
        assert_eq!(ok, (1, 2));

        let calls = AtomicU32::new(0);
        let failure = run(&quick(3), None, "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(TestError::Broken)
        })
        .await
        .unwrap_err();
        assert_eq!(
            (failure.error, failure.class, failure.attempts),
            (TestError::Broken, Class::Permanent, 1)
        );

        let failure = run(&quick(3), None, "test", || async {
            Err::<(), _>(TestError::Flaky)
        })
        .await
        .unwrap_err();
        assert_eq!((failure.class, failure.attempts), (Class::Transient, 3));
    }

    #[tokio::test]
    async fn an_attempt_ends_at_the_deadline_minus_the_reserve() {
        let policy = Policy {
            reserve: Duration::from_millis(50),
            ..quick(3)
        };
        let deadline = Instant::now() + Duration::from_millis(150);
        let failure = run(&policy, Some(deadline), "test", || async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<(), TestError>(())
        })
        .await
        .unwrap_err();
        assert_eq!((failure.error, failure.attempts), (TestError::Late, 1));
        assert!(Instant::now() < deadline, "stopped before the reserve");
    }
}
