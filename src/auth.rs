//! The optional signed-token mode, and who may call what in it.
//!
//! Off by default (the mission has no authentication): every route answers anyone. With
//! `--token-secret`, `/register` returns a token and every user-scoped route requires one.
//! A token is `{kid}.{user}.{expires}.{tag}`: the key id, the user id, the Unix second it
//! expires at, and the hex HMAC-SHA256 of the first three with that key's secret. Every node
//! sharing the secrets accepts it. It proves "this client registered as that user (or was
//! given a token by a backend that vouches for it) until `expires`"; there is no revocation
//! short of rotating the secret.
//!
//! Rotation: the key id is derived from the secret, so a verifier finds the key without
//! trying each. `--token-verify-secret` is accepted but never signs with. To rotate without
//! logging anyone out: add the new secret as the verify secret everywhere, then swap the two
//! (nodes now sign with the new one and still accept the old), then drop the old one once
//! `--token-ttl` has passed.

use hyper::StatusCode;
use ring::hmac;

use crate::http::ApiError;
use crate::model::UserId;

struct Key {
    id: String,
    key: hmac::Key,
}

impl Key {
    fn new(secret: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        Self { id: hex(&digest.as_ref()[..4]), key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()) }
    }
}

pub struct Tokens {
    signing: Key,
    verify_only: Option<Key>,
    ttl_secs: i64,
}

/// Why a token was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    /// Malformed, an unknown key, or a bad signature: indistinguishable on purpose.
    Invalid,
    Expired,
}

impl Tokens {
    pub fn new(secret: &str, verify_secret: Option<&str>, ttl_secs: u64) -> Self {
        Self {
            signing: Key::new(secret),
            verify_only: verify_secret.map(Key::new),
            ttl_secs: i64::try_from(ttl_secs).unwrap_or(i64::MAX),
        }
    }

    /// A token for `user`, valid for the configured TTL from `now` (Unix seconds).
    pub fn issue(&self, user: UserId, now: i64) -> (String, i64) {
        let expires = now.saturating_add(self.ttl_secs);
        let claims = format!("{}.{user}.{expires}", self.signing.id);
        let tag = hmac::sign(&self.signing.key, claims.as_bytes());
        (format!("{claims}.{}", hex(tag.as_ref())), expires)
    }

    /// The user a token speaks for, checked in constant time against its key, and unexpired
    /// at `now` (Unix seconds).
    pub fn verify(&self, token: Option<&str>, now: i64) -> Result<UserId, TokenError> {
        let token = token.filter(|t| !t.is_empty()).ok_or(TokenError::Missing)?;
        let (claims, tag) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
        let mut parts = claims.splitn(3, '.');
        let (Some(kid), Some(user), Some(expires)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Invalid);
        };
        let key = [Some(&self.signing), self.verify_only.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.id == kid)
            .ok_or(TokenError::Invalid)?;
        let tag = decode_hex(tag).ok_or(TokenError::Invalid)?;
        hmac::verify(&key.key, claims.as_bytes(), &tag).map_err(|_| TokenError::Invalid)?;
        let user = crate::model::parse_id(user).ok_or(TokenError::Invalid)?;
        let expires: i64 = expires.parse().map_err(|_| TokenError::Invalid)?;
        if expires <= now {
            return Err(TokenError::Expired);
        }
        Ok(user)
    }
}

/// Who a request acts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// Open mode: no credentials exist, every route answers anyone.
    Anyone,
    /// Token mode: the holder of a valid token of this user.
    User(UserId),
}

/// The caller of a request carrying `token` (from `Authorization: Bearer`, a `token` field
/// or a `token` query parameter). In token mode a missing, invalid or expired token is 401.
pub fn caller(tokens: Option<&Tokens>, token: Option<&str>) -> Result<Caller, ApiError> {
    let Some(tokens) = tokens else { return Ok(Caller::Anyone) };
    let now = crate::model::now_ms() / 1000;
    tokens.verify(token, now).map(Caller::User).map_err(|e| {
        let (code, detail) = match e {
            TokenError::Missing => ("missing_token", "This route needs a token (Authorization: Bearer <token>)."),
            TokenError::Invalid => ("invalid_token", "The token is not valid."),
            TokenError::Expired => ("token_expired", "The token has expired; get a new one."),
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, detail)
    })
}

impl Caller {
    /// Refuses (403) a caller that is not `user`.
    pub fn require(self, user: UserId) -> Result<(), ApiError> {
        match self {
            Caller::User(u) if u != user => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "wrong_user",
                "The token belongs to another user than the one this request acts for.",
            )),
            _ => Ok(()),
        }
    }

    /// Refuses (403) a caller that is not one of `members`.
    pub fn require_member(self, members: &[UserId]) -> Result<(), ApiError> {
        match self {
            Caller::User(u) if !members.contains(&u) => {
                Err(ApiError::new(StatusCode::FORBIDDEN, "not_a_member", "Only members may read this group."))
            }
            _ => Ok(()),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn tokens_verify_for_their_user_until_they_expire() {
        let t = Tokens::new("0123456789abcdef-secret", None, 60);
        let (tok, expires) = t.issue(42, NOW);
        assert_eq!(expires, NOW + 60);
        assert_eq!(t.verify(Some(&tok), NOW), Ok(42));
        assert_eq!(t.verify(Some(&tok), NOW + 59), Ok(42));
        assert_eq!(t.verify(Some(&tok), NOW + 60), Err(TokenError::Expired));
        assert_eq!(t.verify(None, NOW), Err(TokenError::Missing));
        assert_eq!(t.verify(Some(""), NOW), Err(TokenError::Missing));
        for bad in ["zz", "a.b.c.d", "...", &tok.replacen(".42.", ".43.", 1), &tok[..tok.len() - 1]] {
            assert_eq!(t.verify(Some(bad), NOW), Err(TokenError::Invalid), "{bad}");
        }
        // A later expiry cannot be claimed: it is under the signature.
        let (kid, rest) = tok.split_once('.').expect("kid");
        let forged = format!("{kid}.42.{}.{}", NOW + 1_000_000, rest.rsplit_once('.').expect("tag").1);
        assert_eq!(t.verify(Some(&forged), NOW), Err(TokenError::Invalid));
        assert_eq!(Tokens::new("another-secret-0123456", None, 60).verify(Some(&tok), NOW), Err(TokenError::Invalid));
    }

    #[test]
    fn two_secrets_are_accepted_during_a_rotation() {
        let old = Tokens::new("the-old-secret-0123456", None, 60);
        let (old_token, _) = old.issue(7, NOW);
        // Step 1: every node accepts the new secret before any signs with it.
        let step1 = Tokens::new("the-old-secret-0123456", Some("the-new-secret-6543210"), 60);
        // Step 2: nodes sign with the new secret and still accept the old one.
        let step2 = Tokens::new("the-new-secret-6543210", Some("the-old-secret-0123456"), 60);
        let (new_token, _) = step2.issue(7, NOW);
        assert_ne!(old_token.split('.').next(), new_token.split('.').next(), "distinct key ids");
        for t in [&step1, &step2] {
            assert_eq!(t.verify(Some(&old_token), NOW), Ok(7));
            assert_eq!(t.verify(Some(&new_token), NOW), Ok(7));
        }
        // Step 3: the old secret is gone, and so are its tokens.
        let step3 = Tokens::new("the-new-secret-6543210", None, 60);
        assert_eq!(step3.verify(Some(&new_token), NOW), Ok(7));
        assert_eq!(step3.verify(Some(&old_token), NOW), Err(TokenError::Invalid));
    }

    #[test]
    fn callers_may_act_only_for_themselves() {
        assert!(Caller::Anyone.require(1).is_ok());
        assert!(Caller::User(1).require(1).is_ok());
        assert_eq!(Caller::User(2).require(1).expect_err("other").status, StatusCode::FORBIDDEN);
        assert!(Caller::User(2).require_member(&[1, 2]).is_ok());
        assert_eq!(Caller::User(3).require_member(&[1, 2]).expect_err("outsider").code, "not_a_member");
        assert!(Caller::Anyone.require_member(&[1, 2]).is_ok());
    }
}
