//! Turns a delivery into the HTTP request a receiver gets: body, headers, signatures.

use super::config::{SignatureScheme, WebhooksConfig};
use crate::signing;

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!(
    "switchyard/",
    env!("CARGO_PKG_VERSION"),
    " (Segment.io/1.0 compatible)"
);

/// A request ready to send.
#[derive(Debug, Clone)]
pub struct OutgoingRequest {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The bytes Segment signs: the whole body, or the first event of a batch.
pub fn signed_bytes(body: &[u8]) -> &[u8] {
    if body.first() == Some(&b'[') {
        if let Ok(items) = serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(body) {
            if let Some(first) = items.first() {
                let raw = first.get().as_bytes();
                // `raw` borrows from `body`: find its place to return a slice of body.
                let start = raw.as_ptr() as usize - body.as_ptr() as usize;
                return &body[start..start + raw.len()];
            }
        }
    }
    body
}

/// Concatenates stored events into a JSON array without re-serializing them.
pub fn batch_body<'a>(events: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = vec![b'['];
    for (i, e) in events.into_iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(e);
    }
    body.push(b']');
    body
}

/// Builds the request for `url`. `timestamp` is the attempt's time in Unix
/// seconds (Standard Webhooks signs it; it changes on every retry, the id does not).
pub fn build(
    config: &WebhooksConfig,
    url: &str,
    webhook_id: &str,
    body: &[u8],
    timestamp: i64,
) -> OutgoingRequest {
    let mut headers: Vec<(String, String)> = vec![
        ("content-type".into(), "application/json".into()),
        ("user-agent".into(), USER_AGENT.into()),
    ];
    for (k, v) in &config.headers {
        let lower = k.to_ascii_lowercase();
        headers.retain(|(name, _)| *name != lower);
        headers.push((k.clone(), v.clone()));
    }
    if let Some(secret) = &config.shared_secret {
        match config.signature {
            SignatureScheme::Segment => headers.push((
                "x-signature".into(),
                signing::segment_signature(secret, signed_bytes(body)),
            )),
            SignatureScheme::StandardWebhooks => {
                let mut secrets = vec![secret.as_str()];
                if let Some(previous) = &config.previous_shared_secret {
                    secrets.push(previous.as_str());
                }
                headers.push(("webhook-id".into(), webhook_id.to_string()));
                headers.push(("webhook-timestamp".into(), timestamp.to_string()));
                headers.push((
                    "webhook-signature".into(),
                    signing::standard_webhooks_signature(&secrets, webhook_id, timestamp, body),
                ));
            }
        }
    }
    OutgoingRequest {
        url: url.to_string(),
        headers,
        body: body.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(r: &'a OutgoingRequest, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn batch_signature_covers_the_first_event() {
        let first = br#"{"type":"track","event":"a"}"#;
        let body = batch_body([&first[..], br#"{"type":"track","event":"b"}"#]);
        assert_eq!(signed_bytes(&body), first);
        let mut cfg = WebhooksConfig::new("d", &[], &["http://x"]);
        cfg.shared_secret = Some("k".into());
        let r = build(&cfg, "http://x", "id", &body, 0);
        assert_eq!(
            header(&r, "x-signature"),
            Some(signing::segment_signature("k", first).as_str())
        );
    }

    #[test]
    fn single_signature_covers_the_body_and_headers_are_set() {
        let body = br#"{"type":"identify"}"#;
        let mut cfg = WebhooksConfig::new("d", &[], &["http://x"]);
        cfg.shared_secret = Some("k".into());
        cfg.headers.insert("X-Env".into(), "prod".into());
        let r = build(&cfg, "http://x", "id", body, 0);
        assert_eq!(
            header(&r, "x-signature"),
            Some(signing::segment_signature("k", body).as_str())
        );
        assert_eq!(header(&r, "x-env"), Some("prod"));
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        assert!(header(&r, "user-agent").unwrap().starts_with("switchyard/"));
        assert_eq!(r.body, body);
    }

    #[test]
    fn no_secret_no_signature() {
        let cfg = WebhooksConfig::new("d", &[], &["http://x"]);
        let r = build(&cfg, "http://x", "id", b"{}", 0);
        assert!(header(&r, "x-signature").is_none());
    }

    #[test]
    fn standard_webhooks_headers_with_rotation() {
        let mut cfg = WebhooksConfig::new("d", &[], &["http://x"]);
        cfg.shared_secret = Some("new".into());
        cfg.previous_shared_secret = Some("old".into());
        cfg.signature = SignatureScheme::StandardWebhooks;
        let r = build(&cfg, "http://x", "msg_1", b"{}", 1700000000);
        assert_eq!(header(&r, "webhook-id"), Some("msg_1"));
        assert_eq!(header(&r, "webhook-timestamp"), Some("1700000000"));
        assert_eq!(
            header(&r, "webhook-signature"),
            Some(
                signing::standard_webhooks_signature(&["new", "old"], "msg_1", 1700000000, b"{}")
                    .as_str()
            )
        );
        assert!(header(&r, "x-signature").is_none());
    }
}
