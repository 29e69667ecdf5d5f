//! The optional signed-token mode (off by default: the mission has no authentication). A
//! token is HMAC-SHA256 over the user id with a server secret, hex-encoded; every node of a
//! fleet that shares the secret accepts it. It proves "this client registered as that user",
//! nothing more: there is no expiry or revocation.

use ring::hmac;

pub struct Tokens {
    key: hmac::Key,
}

impl Tokens {
    pub fn new(secret: &str) -> Self {
        Self { key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()) }
    }

    pub fn issue(&self, user: i64) -> String {
        let tag = hmac::sign(&self.key, user.to_string().as_bytes());
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Constant-time check of `token` for `user`.
    pub fn verify(&self, user: i64, token: &str) -> bool {
        let Some(tag) = decode_hex(token) else { return false };
        hmac::verify(&self.key, user.to_string().as_bytes(), &tag).is_ok()
    }
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

    #[test]
    fn tokens_verify_for_their_user_only() {
        let t = Tokens::new("0123456789abcdef-secret");
        let tok = t.issue(42);
        assert_eq!(tok.len(), 64);
        assert!(t.verify(42, &tok));
        assert!(!t.verify(43, &tok));
        assert!(!Tokens::new("another-secret-0123456").verify(42, &tok));
        let mut forged = tok.clone();
        forged.replace_range(0..2, if &tok[0..2] == "00" { "01" } else { "00" });
        assert!(!t.verify(42, &forged));
        assert!(!t.verify(42, ""));
        assert!(!t.verify(42, "zz"));
    }
}
