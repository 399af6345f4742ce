//! AWS Signature Version 4, the verifying side (P2): rebuild the canonical request from what
//! arrived, the string to sign from its hash, derive the signing key from the secret of the
//! access key the client named, and compare signatures in constant time. An unknown key, a
//! bad signature or a missing signature is AuthFailure; a request dated more than 15 minutes
//! away from now is RequestExpired (replays of old requests are refused).
//!
//! The keys come from a root-only file (the same check as the store's credentials), one
//! `ACCESS_KEY_ID = SECRET_ACCESS_KEY` a line, `#` comments.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::fault::Fault;

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far the request's date may be from ours (AWS's own bound).
const MAX_SKEW_SECS: i64 = 15 * 60;

/// Access key id -> secret.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Keys(BTreeMap<String, String>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Keys {
    pub fn from_file(path: &Path) -> Result<Keys> {
        let what = || format!("API credentials {}", path.display());
        let mut file = std::fs::File::open(path).with_context(what)?;
        let meta = file.metadata().with_context(what)?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        crate::store::etcd::check_private(meta.mode(), meta.uid(), euid).with_context(what)?;
        let mut text = String::new();
        file.read_to_string(&mut text).with_context(what)?;
        Keys::parse(&text).with_context(what)
    }

    pub fn parse(text: &str) -> Result<Keys> {
        let mut keys = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((id, secret)) = line.split_once('=') else {
                bail!("line {}: expected ACCESS_KEY_ID = SECRET_ACCESS_KEY", n + 1);
            };
            let (id, secret) = (id.trim(), secret.trim());
            if id.is_empty() || secret.is_empty() {
                bail!("line {}: an empty access key id or secret", n + 1);
            }
            if keys.insert(id.to_string(), secret.to_string()).is_some() {
                bail!("line {}: access key {id} given twice", n + 1);
            }
        }
        if keys.is_empty() {
            bail!("no access key (expected ACCESS_KEY_ID = SECRET_ACCESS_KEY lines)");
        }
        Ok(Keys(keys))
    }
}

/// What the verifier needs of a request.
pub struct Signed<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    /// (lowercase name, value) for every header, in arrival order.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// The parsed `Authorization` header.
struct Authorization<'a> {
    key_id: &'a str,
    /// `DATE/REGION/SERVICE/aws4_request`
    scope: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn denied() -> Fault {
    Fault::auth("AWS was not able to validate the provided access credentials")
}

fn authorization(value: &str) -> Option<Authorization<'_>> {
    let rest = value.strip_prefix(ALGORITHM)?.trim_start();
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => cred = Some(v),
            "SignedHeaders" => signed = Some(v),
            "Signature" => sig = Some(v),
            _ => return None,
        }
    }
    let (key_id, scope) = cred?.split_once('/')?;
    Some(Authorization {
        key_id,
        scope,
        signed_headers: signed?.split(';').collect(),
        signature: sig?,
    })
}

/// Verifies the request's signature; `now` is the Unix time in seconds. Returns the access
/// key id that signed it.
pub fn verify(keys: &Keys, req: &Signed<'_>, now: i64) -> Result<String, Fault> {
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let auth = header("authorization")
        .and_then(authorization)
        .ok_or_else(denied)?;
    let secret = keys.0.get(auth.key_id).ok_or_else(denied)?;
    let date = header("x-amz-date").ok_or_else(denied)?;
    let Some(when) = parse_amz_date(date) else {
        return Err(denied());
    };
    if (when - now).abs() > MAX_SKEW_SECS {
        return Err(Fault::client("RequestExpired", "Request has expired."));
    }
    let mut scope = auth.scope.split('/');
    let (Some(day), Some(region), Some(service), Some("aws4_request"), None) = (
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
        scope.next(),
    ) else {
        return Err(denied());
    };
    if !date.starts_with(day) || !auth.signed_headers.contains(&"host") {
        return Err(denied());
    }
    let canonical = canonical_request(req, &auth.signed_headers);
    let to_sign = format!(
        "{ALGORITHM}\n{date}\n{}\n{}",
        auth.scope,
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), day.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let expected = hex(&hmac(&key, to_sign.as_bytes()));
    if constant_time_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        Ok(auth.key_id.to_string())
    } else {
        Err(denied())
    }
}

/// The canonical request of SigV4: method, path, sorted query, the signed headers
/// (lowercase, trimmed, inner spaces collapsed), their names, and the body's SHA-256.
fn canonical_request(req: &Signed<'_>, signed: &[&str]) -> String {
    let mut query: Vec<(String, String)> = req
        .query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (reencode(k), reencode(v))
        })
        .collect();
    query.sort();
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut headers = String::new();
    for name in signed {
        let values: Vec<String> = req
            .headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let path = if req.path.is_empty() { "/" } else { req.path };
    format!(
        "{}\n{path}\n{}\n{headers}\n{}\n{}",
        req.method,
        query.join("&"),
        signed.join(";"),
        hex(&Sha256::digest(req.body))
    )
}

/// A query component as SigV4 encodes it: decoded, then every byte but the unreserved ones
/// as %XX.
fn reencode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut raw = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hexpair = bytes.get(i + 1..i + 3).and_then(|h| {
            std::str::from_utf8(h)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        });
        match (bytes[i], hexpair) {
            (b'%', Some(b)) => {
                raw.push(b);
                i += 3;
            }
            (b, _) => {
                raw.push(b);
                i += 1;
            }
        }
    }
    let mut out = String::new();
    for b in raw {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `YYYYMMDDTHHMMSSZ` -> Unix seconds.
fn parse_amz_date(s: &str) -> Option<i64> {
    if s.len() != 16 || !s.is_ascii() || &s[8..9] != "T" || &s[15..] != "Z" {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().ok();
    let (y, mo, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (h, mi, sec) = (n(9..11)?, n(11..13)?, n(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published example (the IAM ListUsers GET request of the SigV4 documentation's
    /// test suite), checked against its known signature.
    #[test]
    fn the_documented_example_verifies_and_a_wrong_secret_does_not() {
        let headers: Vec<(String, String)> = [
            (
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date, \
                 Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7",
            ),
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
            ("host", "iam.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let req = Signed {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &headers,
            body: b"",
        };
        let now = parse_amz_date("20150830T123600Z").unwrap();
        let good = Keys::parse("AKIDEXAMPLE = wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY").unwrap();
        assert_eq!(verify(&good, &req, now).unwrap(), "AKIDEXAMPLE");
        let bad = Keys::parse("AKIDEXAMPLE = not-the-secret").unwrap();
        assert_eq!(verify(&bad, &req, now).unwrap_err().code, "AuthFailure");
        let other = Keys::parse("AKIDOTHER = wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY").unwrap();
        assert_eq!(verify(&other, &req, now).unwrap_err().code, "AuthFailure");
        assert_eq!(
            verify(&good, &req, now + 3600).unwrap_err().code,
            "RequestExpired"
        );
    }

    #[test]
    fn dates_and_key_files_parse() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20000301T000001Z"), Some(951_868_801));
        assert_eq!(parse_amz_date("2000-03-01"), None);
        assert!(Keys::parse("# nothing\n").is_err());
        assert!(Keys::parse("a = b\na = c").is_err());
        assert!(format!("{:?}", Keys::parse("id = secret").unwrap()).contains("id"));
        assert!(!format!("{:?}", Keys::parse("id = secret").unwrap()).contains("secret"));
    }
}
