//! Request signatures: Segment's `X-Signature` and Standard Webhooks.

use base64::Engine;
use hmac::{Hmac, Mac};

/// Segment's Webhooks signature: lowercase hex HMAC-SHA1 of `body`, keyed by
/// the shared secret. In batch mode `body` is the JSON of the first event.
pub fn segment_signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The key bytes of a Standard Webhooks secret: `whsec_<base64>` decodes to its
/// bytes (the format of the specification); any other string is used as is.
pub fn standard_webhooks_key(secret: &str) -> Vec<u8> {
    if let Some(encoded) = secret.strip_prefix("whsec_") {
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(encoded) {
            return bytes;
        }
    }
    secret.as_bytes().to_vec()
}

/// `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`
/// for each secret, space-separated (several during a rotation).
pub fn standard_webhooks_signature(
    secrets: &[&str],
    webhook_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    secrets
        .iter()
        .map(|secret| {
            let key = standard_webhooks_key(secret);
            let mut mac =
                Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
            mac.update(webhook_id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            format!(
                "v1,{}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha1_matches_rfc_2202() {
        // RFC 2202, test case 2.
        assert_eq!(
            segment_signature("Jefe", b"what do ya want for nothing?"),
            "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }

    #[test]
    fn hmac_sha1_of_a_segment_body() {
        // Computed independently: printf '%s' "$BODY" | openssl dgst -sha1 -hmac s3cret
        let body = br#"{"type":"track","userId":"019mr8mf4r","event":"Purchased an Item"}"#;
        assert_eq!(
            segment_signature("s3cret", body),
            "c5e2b17ac6bc27f9d7e84ebfd4f6f75243e83c62"
        );
    }

    #[test]
    fn standard_webhooks_matches_the_specification_example() {
        let sig = standard_webhooks_signature(
            &["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn rotation_signs_with_every_secret() {
        let sig = standard_webhooks_signature(&["new", "old"], "id", 1, b"{}");
        let parts: Vec<_> = sig.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            parts[0],
            standard_webhooks_signature(&["new"], "id", 1, b"{}")
        );
        assert_eq!(
            parts[1],
            standard_webhooks_signature(&["old"], "id", 1, b"{}")
        );
    }
}
