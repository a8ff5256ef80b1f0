//! Slack's request signing (the `v0` scheme): how Slack signs the requests
//! it sends an app (interactivity, events), and how the app verifies them —
//! HMAC-SHA256 over `v0:{timestamp}:{body}` with the signing secret,
//! compared in constant time, the timestamp within five minutes, and each
//! signature accepted once. notify verifies with it; the demo's preview and
//! the tests sign as Slack would.

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;

const MAX_SKEW_SECS: i64 = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Slack-Signature or X-Slack-Request-Timestamp")]
    Missing,
    #[error("timestamp is not a number")]
    BadTimestamp,
    #[error("timestamp is more than five minutes away")]
    Stale,
    #[error("signature does not match")]
    Mismatch,
    #[error("signature already used")]
    Replayed,
}

/// `v0=` + hex HMAC-SHA256 of `v0:{timestamp}:{body}`, as Slack signs.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// Checks a request's signature; `now_secs` is the current Unix time.
pub fn verify(
    secret: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now_secs: i64,
) -> Result<(), SignatureError> {
    let ts: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if (now_secs - ts).abs() > MAX_SKEW_SECS {
        return Err(SignatureError::Stale);
    }
    let expected = signature
        .strip_prefix("v0=")
        .and_then(|hex_sig| hex::decode(hex_sig).ok())
        .ok_or(SignatureError::Mismatch)?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&expected)
        .map_err(|_| SignatureError::Mismatch)
}

/// Signatures seen within the timestamp window: a captured request cannot
/// be replayed.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: Mutex<HashMap<String, i64>>,
}

impl ReplayGuard {
    pub fn first_use(&self, signature: &str, timestamp: i64, now_secs: i64) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|_, ts| (now_secs - *ts).abs() <= MAX_SKEW_SECS);
        seen.insert(signature.to_owned(), timestamp).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_with_the_right_secret_body_and_time() {
        let body = b"payload=%7B%7D";
        let signature = sign("secret", "1700000000", body);
        assert_eq!(
            verify("secret", "1700000000", &signature, body, 1_700_000_100),
            Ok(())
        );
        assert_eq!(
            verify("other", "1700000000", &signature, body, 1_700_000_100),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(
                "secret",
                "1700000000",
                &signature,
                b"payload=x",
                1_700_000_100
            ),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("secret", "1700000000", &signature, body, 1_700_000_301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify("secret", "soon", &signature, body, 1_700_000_000),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify("secret", "1700000000", "v0=zz", body, 1_700_000_000),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_signature_is_accepted_once() {
        let guard = ReplayGuard::default();
        assert!(guard.first_use("v0=ab", 100, 100));
        assert!(!guard.first_use("v0=ab", 100, 150));
        assert!(guard.first_use("v0=cd", 100, 150));
    }
}
