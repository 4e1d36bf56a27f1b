//! Validation and normalization of a `/v1/batch` body on one core, without
//! HTTP or storage: `cargo bench -p switchyard-spec`. The events are the
//! `switchyard bench` load's (~500 B Segment `track` calls, 100 per batch).
//! Prints the best of five rounds, in nanoseconds per event.

use std::time::Instant;
use switchyard_spec::{Limits, RawBatch, RequestContext};

fn event(i: usize) -> String {
    let head = format!(
        r#"{{"type":"track","event":"Order Completed","userId":"user-{}","messageId":"bench-{i:010}","properties":{{"revenue":42.5,"currency":"EUR","coupon":"SPRING","products":[{{"sku":"SKU-1","name":"Widget","price":19.99,"quantity":1}},{{"sku":"SKU-2","name":"Gadget","price":22.51,"quantity":1}}],"pad":""#,
        i % 97
    );
    let tail = r#""},"context":{"library":{"name":"switchyard-bench","version":"1"},"ip":"127.0.0.1","locale":"en-US","userAgent":"Mozilla/5.0 (X11; Linux x86_64) switchyard-bench"}}"#;
    let pad = 500usize.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad))
}

fn main() {
    let events: Vec<String> = (0..100).map(event).collect();
    let body = format!(r#"{{"batch":[{}]}}"#, events.join(","));
    let limits = Limits::default();
    let batches_per_round = 2_000;
    let mut best = f64::MAX;
    for _ in 0..5 {
        let start = Instant::now();
        let mut bytes = 0;
        for _ in 0..batches_per_round {
            let ctx = RequestContext::new(chrono::Utc::now(), &limits);
            let batch = RawBatch::parse(&body).expect("the fast path reads the bench's batch");
            for item in batch.items {
                bytes += item.normalize(&ctx).map_or(0, |m| m.json.len());
            }
        }
        std::hint::black_box(bytes);
        let ns = start.elapsed().as_nanos() as f64 / (batches_per_round * 100) as f64;
        best = best.min(ns);
    }
    println!("normalize /v1/batch (fast path): {best:.0} ns/event (best of 5 rounds of {batches_per_round} batches of 100)");
}
