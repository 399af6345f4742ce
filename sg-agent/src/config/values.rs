//! The grammar of single values, whatever the file format: protocols (names and IANA
//! numbers), CIDRs, addresses, AWS id shapes, and AWS's description character set.
//!
//! Pure functions from text to a value or to a message with an optional hint. They must not
//! know where the text came from (no locations, no file formats).

use std::net::IpAddr;

use ipnet::IpNet;

use super::diag::did_you_mean;
use crate::policy::Family;

/// A message and maybe a remedy, for the caller to locate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bad {
    pub message: String,
    pub hint: Option<String>,
}

impl Bad {
    pub fn new(message: impl Into<String>) -> Bad {
        Bad {
            message: message.into(),
            hint: None,
        }
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Bad {
        self.hint = Some(hint.into());
        self
    }
}

/// A protocol before its ports are read (F1). Numbers 1, 6, 17 and 58 become their names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProtoName {
    All,
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Number(u8),
}

/// IANA protocol names sg accepts besides tcp/udp/icmp/icmpv6/all (as in /etc/protocols).
const PROTOCOL_NAMES: &[(&str, u8)] = &[
    ("hopopt", 0),
    ("icmp", 1),
    ("igmp", 2),
    ("ggp", 3),
    ("ipencap", 4),
    ("ipv4", 4),
    ("st", 5),
    ("tcp", 6),
    ("egp", 8),
    ("igp", 9),
    ("pup", 12),
    ("udp", 17),
    ("hmp", 20),
    ("xns-idp", 22),
    ("rdp", 27),
    ("iso-tp4", 29),
    ("dccp", 33),
    ("xtp", 36),
    ("ddp", 37),
    ("idpr-cmtp", 38),
    ("ipv6", 41),
    ("ipv6-route", 43),
    ("ipv6-frag", 44),
    ("idrp", 45),
    ("rsvp", 46),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("skip", 57),
    ("icmpv6", 58),
    ("icmp6", 58),
    ("ipv6-icmp", 58),
    ("ipv6-nonxt", 59),
    ("ipv6-opts", 60),
    ("rspf", 73),
    ("vmtp", 81),
    ("eigrp", 88),
    ("ospf", 89),
    ("ax.25", 93),
    ("ipip", 94),
    ("etherip", 97),
    ("encap", 98),
    ("pim", 103),
    ("ipcomp", 108),
    ("vrrp", 112),
    ("l2tp", 115),
    ("isis", 124),
    ("sctp", 132),
    ("fc", 133),
    ("mobility-header", 135),
    ("udplite", 136),
    ("mpls-in-ip", 137),
    ("manet", 138),
    ("hip", 139),
    ("shim6", 140),
    ("wesp", 141),
    ("rohc", 142),
    ("ethernet", 143),
];

const PROTOCOL_HINT: &str = "use tcp, udp, icmp, icmpv6, all (or -1), an IANA protocol number 0-255, or an IANA name such as gre, esp, sctp";

fn by_number(n: u8) -> ProtoName {
    match n {
        1 => ProtoName::Icmp,
        6 => ProtoName::Tcp,
        17 => ProtoName::Udp,
        58 => ProtoName::Icmpv6,
        n => ProtoName::Number(n),
    }
}

/// F1: `tcp`, `udp`, `icmp`, `icmpv6`, `all`/`-1`, a number 0-255 or an IANA name; any case.
pub(crate) fn protocol(text: &str) -> Result<ProtoName, Bad> {
    let t = text.trim().to_ascii_lowercase();
    if t == "-1" || t == "all" {
        return Ok(ProtoName::All);
    }
    if let Ok(n) = t.parse::<i64>() {
        return match u8::try_from(n) {
            Ok(n) => Ok(by_number(n)),
            Err(_) => {
                Err(Bad::new(format!("protocol number {n} is outside 0-255")).hint(PROTOCOL_HINT))
            }
        };
    }
    if let Some((_, n)) = PROTOCOL_NAMES.iter().find(|(name, _)| *name == t) {
        return Ok(by_number(*n));
    }
    let mut known: Vec<&str> = PROTOCOL_NAMES.iter().map(|(n, _)| *n).collect();
    known.push("all");
    let hint = match did_you_mean(&t, &known) {
        Some(k) => format!("did you mean `{k}`? ({PROTOCOL_HINT})"),
        None => PROTOCOL_HINT.to_string(),
    };
    Err(Bad::new(format!("unknown protocol `{text}`")).hint(hint))
}

impl ProtoName {
    pub fn name(self) -> String {
        match self {
            ProtoName::All => "all".into(),
            ProtoName::Tcp => "tcp".into(),
            ProtoName::Udp => "udp".into(),
            ProtoName::Icmp => "icmp".into(),
            ProtoName::Icmpv6 => "icmpv6".into(),
            ProtoName::Number(n) => n.to_string(),
        }
    }
}

/// A CIDR, canonicalised (F5). Returns the canonical net and whether host bits were set.
pub(crate) fn cidr(text: &str) -> Result<(IpNet, bool), Bad> {
    let t = text.trim();
    if !t.contains('/') {
        if let Ok(a) = t.parse::<IpAddr>() {
            let len = if a.is_ipv4() { 32 } else { 128 };
            return Err(Bad::new(format!("`{t}` is an address, not a CIDR"))
                .hint(format!("write `{a}/{len}` for this one address")));
        }
        return Err(Bad::new(format!("`{t}` is not a CIDR")).hint(
            "write an IPv4 CIDR such as 203.0.113.0/24 or an IPv6 CIDR such as 2001:db8::/32",
        ));
    }
    let net: IpNet = t.parse().map_err(|_| {
        Bad::new(format!("`{t}` is not a valid CIDR"))
            .hint("write an IPv4 CIDR such as 203.0.113.0/24 (prefix 0-32) or an IPv6 CIDR such as 2001:db8::/32 (prefix 0-128)")
    })?;
    let canon = net.trunc();
    Ok((canon, canon != net))
}

/// An interface address: one host address, IPv4 or IPv6.
pub(crate) fn address(text: &str) -> Result<IpAddr, Bad> {
    let t = text.trim();
    if let Some((a, _)) = t.split_once('/')
        && a.parse::<IpAddr>().is_ok()
    {
        return Err(Bad::new(format!(
            "`{t}` has a prefix length; an interface address is one address"
        ))
        .hint(format!("write `{a}`")));
    }
    let a: IpAddr = t
        .parse()
        .map_err(|_| Bad::new(format!("`{t}` is not an IPv4 or IPv6 address")))?;
    if a.is_unspecified() || a.is_multicast() {
        return Err(Bad::new(format!(
            "`{a}` cannot be an interface's private address (unspecified or multicast)"
        )));
    }
    Ok(a)
}

fn id_body_ok(body: &str) -> bool {
    let mut chars = body.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && body.len() <= 64
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Whether `text` has the shape of a security group id (`sg-` and a readable tail).
pub(crate) fn looks_like_group_id(text: &str) -> bool {
    text.strip_prefix("sg-").is_some_and(id_body_ok)
}

/// Whether `text` has the shape of a prefix list id.
pub(crate) fn looks_like_prefix_list_id(text: &str) -> bool {
    text.strip_prefix("pl-").is_some_and(id_body_ok)
}

/// `sg-` then 1-64 letters, digits, `-` or `_` starting with a letter or digit. AWS's own ids
/// are `sg-` and 8 or 17 hex digits; readable ids such as `sg-web` are accepted too.
pub(crate) fn group_id(text: &str) -> Result<(), Bad> {
    if looks_like_group_id(text) {
        return Ok(());
    }
    Err(Bad::new(format!("`{text}` is not a security group id"))
        .hint("a group id is `sg-` followed by letters, digits, `-` or `_` (e.g. sg-0a1b2c3d or sg-web)"))
}

/// `pl-` then 1-64 letters, digits, `-` or `_`.
pub(crate) fn prefix_list_id(text: &str) -> Result<(), Bad> {
    if looks_like_prefix_list_id(text) {
        return Ok(());
    }
    Err(Bad::new(format!("`{text}` is not a prefix list id"))
        .hint("a prefix list id is `pl-` followed by letters, digits, `-` or `_` (e.g. pl-0123456789abcdef0)"))
}

/// Whether `text` has the shape of a network ACL id.
pub(crate) fn looks_like_nacl_id(text: &str) -> bool {
    text.strip_prefix("acl-").is_some_and(id_body_ok)
}

/// Whether `text` has the shape of a subnet id.
pub(crate) fn looks_like_subnet_id(text: &str) -> bool {
    text.strip_prefix("subnet-").is_some_and(id_body_ok)
}

/// `acl-` then 1-64 letters, digits, `-` or `_` (AWS's: `acl-` and 17 hex digits).
pub(crate) fn nacl_id(text: &str) -> Result<(), Bad> {
    if looks_like_nacl_id(text) {
        return Ok(());
    }
    Err(Bad::new(format!("`{text}` is not a network ACL id"))
        .hint("a network ACL id is `acl-` followed by letters, digits, `-` or `_` (e.g. acl-0123456789abcdef0 or acl-web)"))
}

/// `subnet-` then 1-64 letters, digits, `-` or `_`.
pub(crate) fn subnet_id(text: &str) -> Result<(), Bad> {
    if looks_like_subnet_id(text) {
        return Ok(());
    }
    Err(Bad::new(format!("`{text}` is not a subnet id"))
        .hint("a subnet id is `subnet-` followed by letters, digits, `-` or `_` (e.g. subnet-0123456789abcdef0 or subnet-web)"))
}

/// F6: `sgr-` and exactly 17 lowercase hex digits.
pub(crate) fn rule_id(text: &str) -> Result<(), Bad> {
    let ok = text.strip_prefix("sgr-").is_some_and(|h| {
        h.len() == 17
            && h.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    });
    if ok {
        return Ok(());
    }
    Err(Bad::new(format!("`{text}` is not a security group rule id"))
        .hint("a rule id is `sgr-` followed by exactly 17 lowercase hex digits (e.g. sgr-0c1d2e3f4a5b6c7d8), or leave it out to have one derived"))
}

/// Characters AWS allows in VPC security group names and descriptions (besides letters,
/// digits and spaces).
pub(crate) const DESCRIPTION_PUNCTUATION: &str = "._-:/()#,@[]+=&;{}!$*";

/// F6: at most 255 characters of AWS's set.
pub(crate) fn description(text: &str) -> Result<(), Bad> {
    let n = text.chars().count();
    if n > 255 {
        return Err(Bad::new(format!(
            "the text is {n} characters long; AWS allows at most 255"
        )));
    }
    if let Some((i, c)) = text.chars().enumerate().find(|(_, c)| {
        !(c.is_ascii_alphanumeric() || *c == ' ' || DESCRIPTION_PUNCTUATION.contains(*c))
    }) {
        return Err(Bad::new(format!(
            "character {:?} (position {}) is not allowed by AWS",
            c,
            i + 1
        ))
        .hint(format!(
            "allowed: a-z A-Z 0-9 spaces and {DESCRIPTION_PUNCTUATION}"
        )));
    }
    Ok(())
}

/// `ipv4`/`IPv4`/`v4` and `ipv6`/`IPv6`/`v6`.
pub(crate) fn family(text: &str) -> Result<Family, Bad> {
    match text.trim().to_ascii_lowercase().as_str() {
        "ipv4" | "v4" | "4" => Ok(Family::V4),
        "ipv6" | "v6" | "6" => Ok(Family::V6),
        _ => Err(Bad::new(format!("`{text}` is not an address family")).hint("use ipv4 or ipv6")),
    }
}

pub(crate) fn family_name(f: Family) -> &'static str {
    match f {
        Family::V4 => "IPv4",
        Family::V6 => "IPv6",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f1_protocol_numbers_normalise_to_names() {
        assert_eq!(protocol("6"), Ok(ProtoName::Tcp));
        assert_eq!(protocol("17"), Ok(ProtoName::Udp));
        assert_eq!(protocol("1"), Ok(ProtoName::Icmp));
        assert_eq!(protocol("58"), Ok(ProtoName::Icmpv6));
        assert_eq!(protocol("-1"), Ok(ProtoName::All));
        assert_eq!(protocol("ALL"), Ok(ProtoName::All));
        assert_eq!(protocol("gre"), Ok(ProtoName::Number(47)));
        assert_eq!(protocol("0"), Ok(ProtoName::Number(0)));
        assert!(protocol("256").is_err());
        assert!(protocol("tpc").unwrap_err().hint.unwrap().contains("`tcp`"));
    }

    #[test]
    fn f5_cidrs_are_canonicalised_and_addresses_get_a_hint() {
        let (n, host_bits) = cidr("10.1.2.3/8").unwrap();
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert!(host_bits);
        assert!(!cidr("::/0").unwrap().1);
        assert_eq!(
            cidr("198.51.100.10").unwrap_err().hint.unwrap(),
            "write `198.51.100.10/32` for this one address"
        );
        assert!(cidr("10.0.0.0/33").is_err());
    }

    #[test]
    fn f6_ids_and_descriptions() {
        assert!(rule_id("sgr-0c1d2e3f4a5b6c7d8").is_ok());
        assert!(rule_id("sgr-0c1d2e3f4a5b6c7d").is_err());
        assert!(rule_id("sgr-0C1D2E3F4A5B6C7D8").is_err());
        assert!(group_id("sg-web").is_ok());
        assert!(group_id("sg-").is_err());
        assert!(group_id("web").is_err());
        assert!(description("Allow web tier to DB (MySQL) #1").is_ok());
        assert!(description("it's").is_err());
        assert!(description(&"x".repeat(256)).is_err());
    }
}
