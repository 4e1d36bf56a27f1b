//! Native services behind the Node modules functions use that JavaScript in
//! QuickJS cannot do well: public-key signatures (`crypto.sign`,
//! `createSign`, `createVerify`), `pbkdf2` and `zlib`. Plain functions on
//! bytes; `sandbox` exposes them to the prelude through `__host`.

use base64::Engine;
use ring::signature;
use std::io::Read;

/// A key as PEM text: its label (`PRIVATE KEY`, `PUBLIC KEY`, …) and DER.
struct Pem {
    label: String,
    der: Vec<u8>,
}

fn parse_pem(text: &str) -> Result<Pem, String> {
    let text = text.trim();
    let begin = text
        .find("-----BEGIN ")
        .ok_or("the key is not PEM (no \"-----BEGIN\" line)")?;
    let rest = &text[begin + "-----BEGIN ".len()..];
    let label_end = rest.find("-----").ok_or("malformed PEM header")?;
    let label = rest[..label_end].to_string();
    let body = &rest[label_end + 5..];
    let end = body
        .find("-----END ")
        .ok_or_else(|| format!("no \"-----END {label}-----\" line"))?;
    let body: String = body[..end]
        .lines()
        .filter(|l| !l.contains(':'))
        .flat_map(|l| l.chars())
        .filter(|c| !c.is_whitespace())
        .collect();
    if label.contains("ENCRYPTED") || text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err("encrypted private keys are not supported: give the key unencrypted".into());
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("the PEM body is not valid base64: {e}"))?;
    Ok(Pem { label, der })
}

/// One DER element: `(tag, contents, rest)`.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

/// A public key ring can verify with.
enum PublicKey {
    /// `RSAPublicKey` DER.
    Rsa(Vec<u8>),
    /// An uncompressed point, with its curve.
    P256(Vec<u8>),
    P384(Vec<u8>),
}

/// Reads a `SubjectPublicKeyInfo` (`PUBLIC KEY`) or a PKCS#1 `RSA PUBLIC KEY`.
fn public_key(pem: &Pem) -> Result<PublicKey, String> {
    if pem.label == "RSA PUBLIC KEY" {
        return Ok(PublicKey::Rsa(pem.der.clone()));
    }
    if pem.label != "PUBLIC KEY" {
        return Err(format!(
            "expected a public key (\"PUBLIC KEY\" or \"RSA PUBLIC KEY\" PEM), not {:?}",
            pem.label
        ));
    }
    let malformed = || "malformed public key".to_string();
    let (_, spki, _) = der_element(&pem.der).ok_or_else(malformed)?;
    let (_, algorithm, rest) = der_element(spki).ok_or_else(malformed)?;
    let (bit_tag, bits, _) = der_element(rest).ok_or_else(malformed)?;
    let (_, oid, params) = der_element(algorithm).ok_or_else(malformed)?;
    let key = match (bit_tag, bits.split_first()) {
        (0x03, Some((0, key))) => key.to_vec(),
        _ => return Err(malformed()),
    };
    if oid == OID_RSA {
        return Ok(PublicKey::Rsa(key));
    }
    if oid == OID_EC {
        let curve = der_element(params).map(|(_, c, _)| c);
        return match curve {
            Some(c) if c == OID_P256 => Ok(PublicKey::P256(key)),
            Some(c) if c == OID_P384 => Ok(PublicKey::P384(key)),
            _ => Err("only the P-256 and P-384 curves are supported".into()),
        };
    }
    Err("only RSA and EC (P-256, P-384) public keys are supported".into())
}

/// The digest named the way Node names it for signatures: `RSA-SHA256`,
/// `sha256`, `ecdsa-with-SHA256`, …
fn digest_bits(algorithm: &str) -> Result<u16, String> {
    let lower = algorithm.to_ascii_lowercase();
    let name = lower
        .trim_start_matches("rsa-")
        .trim_start_matches("ecdsa-with-");
    match name.replace('-', "").as_str() {
        "sha256" => Ok(256),
        "sha384" => Ok(384),
        "sha512" => Ok(512),
        _ => Err(format!(
            "Invalid digest: {algorithm} (signatures support SHA-256, SHA-384 and SHA-512)"
        )),
    }
}

/// Signs `data` with a PEM private key (PKCS#8 `PRIVATE KEY` for RSA or
/// EC, PKCS#1 `RSA PRIVATE KEY`): RSASSA-PKCS1-v1_5 or ECDSA, whose
/// signature is DER unless `p1363` (the fixed-size `r || s` JWTs use).
pub fn sign(algorithm: &str, key_pem: &str, data: &[u8], p1363: bool) -> Result<Vec<u8>, String> {
    let bits = digest_bits(algorithm)?;
    let pem = parse_pem(key_pem)?;
    let rng = ring::rand::SystemRandom::new();
    let rsa = match pem.label.as_str() {
        "RSA PRIVATE KEY" => Some(signature::RsaKeyPair::from_der(&pem.der).map_err(|e| format!("invalid RSA private key: {e}"))?),
        "PRIVATE KEY" => signature::RsaKeyPair::from_pkcs8(&pem.der).ok(),
        "EC PRIVATE KEY" => {
            return Err("SEC1 \"EC PRIVATE KEY\" keys are not supported: convert the key to PKCS#8 (openssl pkcs8 -topk8 -nocrypt)".into())
        }
        other => return Err(format!("expected a private key PEM, not {other:?}")),
    };
    if let Some(key) = rsa {
        let padding: &dyn signature::RsaEncoding = match bits {
            256 => &signature::RSA_PKCS1_SHA256,
            384 => &signature::RSA_PKCS1_SHA384,
            _ => &signature::RSA_PKCS1_SHA512,
        };
        let mut out = vec![0; key.public().modulus_len()];
        key.sign(padding, &rng, data, &mut out)
            .map_err(|_| "RSA signing failed".to_string())?;
        return Ok(out);
    }
    let curves: [(
        &signature::EcdsaSigningAlgorithm,
        &signature::EcdsaSigningAlgorithm,
        u16,
    ); 2] = [
        (
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            256,
        ),
        (
            &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            384,
        ),
    ];
    for (der_alg, fixed_alg, curve_bits) in curves {
        let alg = if p1363 { fixed_alg } else { der_alg };
        if let Ok(key) = signature::EcdsaKeyPair::from_pkcs8(alg, &pem.der, &rng) {
            if curve_bits != bits {
                return Err(format!(
                    "a P-{curve_bits} key signs with SHA-{curve_bits}, not SHA-{bits}"
                ));
            }
            return key
                .sign(&rng, data)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| "ECDSA signing failed".to_string());
        }
    }
    Err("unsupported private key: RSA, or EC on P-256 or P-384, in PKCS#8".into())
}

/// Checks a signature made by [`sign`] (or by anyone: RSASSA-PKCS1-v1_5,
/// ECDSA in DER or, with `p1363`, fixed-size form) against a PEM public key.
pub fn verify(
    algorithm: &str,
    key_pem: &str,
    data: &[u8],
    sig: &[u8],
    p1363: bool,
) -> Result<bool, String> {
    let bits = digest_bits(algorithm)?;
    let key = public_key(&parse_pem(key_pem)?)?;
    let (alg, key): (&dyn signature::VerificationAlgorithm, Vec<u8>) = match (key, bits, p1363) {
        (PublicKey::Rsa(k), 256, _) => (&signature::RSA_PKCS1_2048_8192_SHA256, k),
        (PublicKey::Rsa(k), 384, _) => (&signature::RSA_PKCS1_2048_8192_SHA384, k),
        (PublicKey::Rsa(k), _, _) => (&signature::RSA_PKCS1_2048_8192_SHA512, k),
        (PublicKey::P256(k), 256, false) => (&signature::ECDSA_P256_SHA256_ASN1, k),
        (PublicKey::P256(k), 256, true) => (&signature::ECDSA_P256_SHA256_FIXED, k),
        (PublicKey::P256(k), 384, false) => (&signature::ECDSA_P256_SHA384_ASN1, k),
        (PublicKey::P384(k), 384, false) => (&signature::ECDSA_P384_SHA384_ASN1, k),
        (PublicKey::P384(k), 384, true) => (&signature::ECDSA_P384_SHA384_FIXED, k),
        (PublicKey::P384(k), 256, false) => (&signature::ECDSA_P384_SHA256_ASN1, k),
        _ => return Err(format!("SHA-{bits} is not supported with this key")),
    };
    Ok(signature::UnparsedPublicKey::new(alg, key)
        .verify(data, sig)
        .is_ok())
}

/// Most PBKDF2 rounds one call may ask for.
const MAX_PBKDF2_ITERATIONS: u32 = 1_000_000;

/// PBKDF2 with HMAC over the named digest.
pub fn pbkdf2(
    digest: &str,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
    key_len: usize,
) -> Result<Vec<u8>, String> {
    let alg = match digest.to_ascii_lowercase().replace('-', "").as_str() {
        "sha1" => ring::pbkdf2::PBKDF2_HMAC_SHA1,
        "sha256" => ring::pbkdf2::PBKDF2_HMAC_SHA256,
        "sha384" => ring::pbkdf2::PBKDF2_HMAC_SHA384,
        "sha512" => ring::pbkdf2::PBKDF2_HMAC_SHA512,
        _ => return Err(format!("Invalid digest: {digest}")),
    };
    // Native code cannot be interrupted at the function's deadline: the
    // work is bounded instead (a million rounds of SHA-256 is about 0.3 s).
    if iterations > MAX_PBKDF2_ITERATIONS {
        return Err(format!(
            "The value of \"iterations\" is out of range. It must be <= {MAX_PBKDF2_ITERATIONS} in switchyard. Received {iterations}"
        ));
    }
    let iterations = std::num::NonZeroU32::new(iterations)
        .ok_or("The value of \"iterations\" is out of range. It must be >= 1")?;
    if key_len > 1 << 20 {
        return Err("keylen is too large (at most 1 MiB)".into());
    }
    let mut out = vec![0; key_len];
    ring::pbkdf2::derive(alg, iterations, salt, password, &mut out);
    Ok(out)
}

/// `zlib`'s one-shot methods: `gzip`, `gunzip`, `deflate`, `inflate`,
/// `deflateRaw`, `inflateRaw`, `unzip` (gzip or zlib, by its header).
/// Output past `max_bytes` is an error, so a small bomb cannot take more
/// memory than the function is allowed.
pub fn zlib(op: &str, data: &[u8], max_bytes: usize) -> Result<Vec<u8>, String> {
    use flate2::read::{
        DeflateDecoder, DeflateEncoder, GzDecoder, GzEncoder, ZlibDecoder, ZlibEncoder,
    };
    use flate2::Compression;
    let level = Compression::default();
    let reader: Box<dyn Read + '_> = match op {
        "gzip" => Box::new(GzEncoder::new(data, level)),
        "deflate" => Box::new(ZlibEncoder::new(data, level)),
        "deflateRaw" => Box::new(DeflateEncoder::new(data, level)),
        "gunzip" => Box::new(GzDecoder::new(data)),
        "inflate" => Box::new(ZlibDecoder::new(data)),
        "inflateRaw" => Box::new(DeflateDecoder::new(data)),
        "unzip" if data.starts_with(&[0x1f, 0x8b]) => Box::new(GzDecoder::new(data)),
        "unzip" => Box::new(ZlibDecoder::new(data)),
        other => return Err(format!("zlib.{other}Sync is not supported")),
    };
    let mut out = Vec::new();
    reader
        .take((max_bytes as u64).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| match e.to_string().as_str() {
            "corrupt deflate stream" | "invalid gzip header" => {
                "incorrect header check".to_string()
            }
            text => text.to_string(),
        })?;
    if out.len() > max_bytes {
        return Err(format!(
            "Cannot create a Buffer larger than {max_bytes} bytes (the function's memory limit)"
        ));
    }
    Ok(out)
}

/// A time zone at an instant, as `Intl.DateTimeFormat` needs it:
/// `{"name", "offset" (seconds east of UTC), "abbr"}` as JSON, or `None`
/// for a name the time zone database does not know.
pub fn time_zone_at(name: &str, epoch_ms: f64) -> Option<String> {
    let tz = if name.eq_ignore_ascii_case("utc") || name.eq_ignore_ascii_case("etc/utc") {
        jiff::tz::TimeZone::UTC
    } else {
        jiff::tz::TimeZone::get(name).ok()?
    };
    let at = jiff::Timestamp::from_millisecond(epoch_ms as i64).ok()?;
    let info = tz.to_offset_info(at);
    let canonical = if tz == jiff::tz::TimeZone::UTC {
        "UTC".to_string()
    } else {
        tz.iana_name().unwrap_or(name).to_string()
    };
    Some(
        serde_json::json!({
            "name": canonical,
            "offset": info.offset().seconds(),
            "abbr": info.abbreviation(),
        })
        .to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::KeyPair;

    fn pkcs8_pem(der: &[u8], label: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    /// An SPKI for a P-256 point: the fixed 26-byte prefix, then the point.
    fn p256_spki(point: &[u8]) -> Vec<u8> {
        let mut der = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        der.extend_from_slice(point);
        der
    }

    #[test]
    fn ecdsa_signatures_verify_in_both_encodings_and_fail_when_tampered() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &rng,
        )
        .unwrap();
        let private = pkcs8_pem(pkcs8.as_ref(), "PRIVATE KEY");
        let pair = signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.as_ref(),
            &rng,
        )
        .unwrap();
        let public = pkcs8_pem(&p256_spki(pair.public_key().as_ref()), "PUBLIC KEY");
        for p1363 in [false, true] {
            let sig = sign("sha256", &private, b"payload", p1363).unwrap();
            assert_eq!(sig.len() == 64, p1363, "fixed-size r||s only when asked");
            assert!(verify("ecdsa-with-SHA256", &public, b"payload", &sig, p1363).unwrap());
            assert!(!verify("sha256", &public, b"payloaD", &sig, p1363).unwrap());
        }
        assert!(sign("sha512", &private, b"x", false)
            .unwrap_err()
            .contains("P-256 key signs with SHA-256"));
        assert!(sign("md5", &private, b"x", false)
            .unwrap_err()
            .contains("Invalid digest"));
        assert!(sign("sha256", "not a key", b"x", false)
            .unwrap_err()
            .contains("not PEM"));
    }

    const RSA_PKCS1: &str = include_str!("../tests/keys/rsa-pkcs1.pem");
    const RSA_PKCS8: &str = include_str!("../tests/keys/rsa-pkcs8.pem");
    const RSA_PUBLIC: &str = include_str!("../tests/keys/rsa-public.pem");
    /// `printf payload | openssl dgst -sha256 -sign rsa-pkcs1.pem | base64`
    const RSA_SIGNATURE: &str = "jmGBRz+d/SmVp5ecMWTsc15SWDAI6lme5qdLoboO61ajChd1VcFivcWavAJX/Gq7AYJ/FfuV/p4gxy7CTM/yu9M0wIPoLZQ5PhrvgHxXApICitxIDxr1wb5m8OKSCnVgYxvt/Gaez0IYHoIu9AopNITdyVF7im3/yU9rWP8aUD5dOrNyR5gJghKZsCfA9WQ9hCYyheaKfIHXFzopVyT6oCdGSrZ5hBxEZy1vsLbi9cLPikyBRFMWxryLO0so9otmSRyXo5bMdXN/wREMoOe9+HDIFxHOPW/u395h0FqRFB8ucsDwkVIDQ7ISFoOqJQEJYe2E8aBO0ITC2GIr9lFBUQ==";

    #[test]
    fn rsa_signatures_match_openssl_and_verify() {
        let expected = base64::engine::general_purpose::STANDARD
            .decode(RSA_SIGNATURE)
            .unwrap();
        for key in [RSA_PKCS1, RSA_PKCS8] {
            assert_eq!(
                sign("RSA-SHA256", key, b"payload", false).unwrap(),
                expected
            );
        }
        assert!(verify("RSA-SHA256", RSA_PUBLIC, b"payload", &expected, false).unwrap());
        assert!(!verify("sha256", RSA_PUBLIC, b"payloaD", &expected, false).unwrap());
        assert!(!verify("sha512", RSA_PUBLIC, b"payload", &expected, false).unwrap());
        assert!(verify("sha256", RSA_PKCS8, b"payload", &expected, false)
            .unwrap_err()
            .contains("expected a public key"));
    }

    #[test]
    fn time_zones_come_from_the_bundled_database() {
        // 2024-05-01T12:00:00Z: daylight time in New York, none in Kolkata.
        let at = 1_714_564_800_000.0;
        let ny: serde_json::Value =
            serde_json::from_str(&time_zone_at("America/New_York", at).unwrap()).unwrap();
        assert_eq!(
            (ny["offset"].as_i64(), ny["abbr"].as_str()),
            (Some(-4 * 3600), Some("EDT"))
        );
        let kolkata: serde_json::Value =
            serde_json::from_str(&time_zone_at("Asia/Kolkata", at).unwrap()).unwrap();
        assert_eq!(kolkata["offset"], 19_800);
        let utc: serde_json::Value =
            serde_json::from_str(&time_zone_at("utc", at).unwrap()).unwrap();
        assert_eq!(
            (utc["name"].as_str(), utc["offset"].as_i64()),
            (Some("UTC"), Some(0))
        );
        assert_eq!(time_zone_at("Mars/Olympus", at), None);
    }

    #[test]
    fn pbkdf2_matches_the_rfc_6070_vector() {
        let out = pbkdf2("sha1", b"password", b"salt", 2, 20).unwrap();
        assert_eq!(hex::encode(out), "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957");
        assert!(pbkdf2("sha1", b"p", b"s", 0, 20).is_err());
        assert!(pbkdf2("sha256", b"p", b"s", MAX_PBKDF2_ITERATIONS + 1, 20)
            .unwrap_err()
            .contains("out of range"));
    }

    #[test]
    fn zlib_round_trips_and_refuses_bombs() {
        let data = b"hello hello hello hello".repeat(100);
        for (pack, unpack) in [
            ("gzip", "gunzip"),
            ("deflate", "inflate"),
            ("deflateRaw", "inflateRaw"),
            ("gzip", "unzip"),
            ("deflate", "unzip"),
        ] {
            let packed = zlib(pack, &data, 1 << 20).unwrap();
            assert!(packed.len() < data.len());
            assert_eq!(
                zlib(unpack, &packed, 1 << 20).unwrap(),
                data,
                "{pack} → {unpack}"
            );
        }
        let bomb = zlib("gzip", &vec![0u8; 10 << 20], usize::MAX).unwrap();
        assert!(zlib("gunzip", &bomb, 1 << 20)
            .unwrap_err()
            .contains("larger than"));
        assert!(zlib("gunzip", b"not gzip", 1 << 20).is_err());
    }
}
