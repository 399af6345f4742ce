//! The Query protocol's request side: a form-encoded body (`Action=...&Version=...&...`) into
//! one typed [`Call`]. Lists are flattened with 1-based indexes, as the aws CLI and boto3 send
//! them: `IpPermissions.1.IpRanges.1.CidrIp`, `IpPermissions.1.Groups.1.GroupId`,
//! `TagSpecification.1.Tag.1.Key`, `SecurityGroupRuleId.1`, `Filter.1.Name` and
//! `Filter.1.Value.1`. Nothing here knows the store or the policy: values stay as the client
//! wrote them and the one validator judges them later.

use std::collections::BTreeMap;

use super::fault::Fault;
use crate::policy::Direction;

/// EC2's API version (P1).
pub const EC2_VERSION: &str = "2016-11-15";
/// STS's, for GetCallerIdentity.
pub const STS_VERSION: &str = "2011-06-15";

/// A decoded form: name -> value (a name given twice keeps the last value).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Form(BTreeMap<String, String>);

impl Form {
    /// `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte; UTF-8).
    pub fn parse(body: &[u8]) -> Result<Form, Fault> {
        let mut m = BTreeMap::new();
        for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            let (k, v) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            m.insert(decode(k)?, decode(v)?);
        }
        Ok(Form(m))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn required(&self, name: &str) -> Result<String, Fault> {
        self.get(name)
            .map(str::to_string)
            .ok_or_else(|| Fault::missing(name))
    }

    /// The distinct indexes N of `prefix.N` and `prefix.N.*`, in numeric order.
    fn indexes(&self, prefix: &str) -> Vec<u32> {
        let dotted = format!("{prefix}.");
        let mut out: Vec<u32> = self
            .0
            .range(dotted.clone()..)
            .take_while(|(k, _)| k.starts_with(&dotted))
            .filter_map(|(k, _)| k[dotted.len()..].split('.').next()?.parse().ok())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The values of `prefix.1`, `prefix.2`, ... in index order.
    fn strings(&self, prefix: &str) -> Vec<String> {
        self.indexes(prefix)
            .into_iter()
            .filter_map(|n| self.get(&format!("{prefix}.{n}")).map(str::to_string))
            .collect()
    }

    fn int(&self, name: &str) -> Result<Option<i64>, Fault> {
        self.get(name)
            .map(|v| {
                v.trim().parse::<i64>().map_err(|_| {
                    Fault::invalid(format!("Invalid value '{v}' for {name}: not an integer"))
                })
            })
            .transpose()
    }

    fn flag(&self, name: &str) -> bool {
        self.get(name)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

fn decode(raw: &[u8]) -> Result<String, Fault> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < raw.len() => {
                let hex = std::str::from_utf8(&raw[i + 1..i + 3]).unwrap_or("zz");
                let byte = u8::from_str_radix(hex, 16)
                    .map_err(|_| Fault::invalid("the form body has a bad %-escape"))?;
                out.push(byte);
                i += 2;
            }
            b'%' => return Err(Fault::invalid("the form body has a bad %-escape")),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| Fault::invalid("the form body is not UTF-8"))
}

/// A group named by id, or by name (in the default VPC), as EC2 accepts both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupRef {
    Id(String),
    Name(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// One peer of an IpPermission, with its own description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub peer: PeerKind,
    pub description: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerKind {
    Cidr(String),
    PrefixList(String),
    Group(GroupRef),
}

/// An IpPermission as the client sent it: one protocol and port range, several peers (P3:
/// each peer becomes one rule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permission {
    pub protocol: String,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub peers: Vec<PeerSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub name: String,
    pub values: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Page {
    pub max_results: Option<i64>,
    pub next_token: Option<String>,
}

/// What a Describe call of one kind of resource asks for: these ids (none: every one), kept
/// by the filters, one page of them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Listing {
    pub ids: Vec<String>,
    pub filters: Vec<Filter>,
    pub page: Page,
}

/// One typed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    CreateSecurityGroup {
        name: String,
        description: String,
        vpc_id: Option<String>,
        tags: Vec<Tag>,
    },
    DeleteSecurityGroup {
        group: GroupRef,
    },
    DescribeSecurityGroups {
        ids: Vec<String>,
        names: Vec<String>,
        filters: Vec<Filter>,
        page: Page,
    },
    Authorize {
        direction: Direction,
        group: GroupRef,
        permissions: Vec<Permission>,
        /// TagSpecification: the new rules' tags.
        tags: Vec<Tag>,
    },
    Revoke {
        direction: Direction,
        group: GroupRef,
        permissions: Vec<Permission>,
        rule_ids: Vec<String>,
    },
    DescribeSecurityGroupRules {
        rule_ids: Vec<String>,
        filters: Vec<Filter>,
        page: Page,
    },
    CreateTags {
        resources: Vec<String>,
        tags: Vec<Tag>,
    },
    DeleteTags {
        resources: Vec<String>,
        /// A key alone deletes the tag whatever its value.
        tags: Vec<(String, Option<String>)>,
    },
    /// UpdateSecurityGroupRuleDescriptionsIngress/Egress: by rule id and/or by permission
    /// (the peers' descriptions are the new ones).
    UpdateDescriptions {
        direction: Direction,
        group: GroupRef,
        permissions: Vec<Permission>,
        /// (rule id, new description: None removes it)
        by_id: Vec<(String, Option<String>)>,
    },
    ModifySecurityGroupRules {
        group: GroupRef,
        rules: Vec<RuleUpdate>,
    },
    DescribeSecurityGroupReferences {
        ids: Vec<String>,
    },
    DescribeStaleSecurityGroups,
    DescribeTags {
        filters: Vec<Filter>,
        page: Page,
    },
    DescribeVpcs {
        ids: Vec<String>,
    },
    CreateVpc {
        cidr: String,
    },
    DescribeNetworkInterfaces(Listing),
    /// The groups of one interface (the only attribute sg models).
    ModifyNetworkInterfaceAttribute {
        id: String,
        groups: Vec<String>,
    },
    CreatePrefixList {
        name: String,
        family: String,
        max_entries: Option<i64>,
        entries: Vec<String>,
    },
    ModifyPrefixList {
        id: String,
        current_version: Option<i64>,
        name: Option<String>,
        max_entries: Option<i64>,
        add: Vec<String>,
        remove: Vec<String>,
    },
    DeletePrefixList {
        id: String,
    },
    DescribePrefixLists(Listing),
    GetPrefixListEntries {
        id: String,
        target_version: Option<i64>,
        page: Page,
    },
    GetCallerIdentity,
    CreateNetworkAcl {
        vpc_id: String,
        tags: Vec<Tag>,
    },
    /// CreateNetworkAclEntry (`replace` false) or ReplaceNetworkAclEntry (true).
    PutNetworkAclEntry {
        replace: bool,
        entry: NaclEntrySpec,
    },
    DeleteNetworkAclEntry {
        acl_id: String,
        number: i64,
        egress: bool,
    },
    DeleteNetworkAcl {
        acl_id: String,
    },
    ReplaceNetworkAclAssociation {
        association_id: String,
        acl_id: String,
    },
    DescribeNetworkAcls(Listing),
    DescribeSubnets(Listing),
}

/// A network ACL entry as CreateNetworkAclEntry sends it: `RuleNumber`, `Protocol`,
/// `RuleAction`, `Egress`, `CidrBlock` or `Ipv6CidrBlock`, `PortRange.From`/`To`,
/// `Icmp.Type`/`Code` (botocore's `IcmpTypeCode`, serialized under its location name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NaclEntrySpec {
    pub acl_id: String,
    pub number: i64,
    pub protocol: String,
    pub action: String,
    pub egress: bool,
    pub cidr: Option<String>,
    pub ipv6_cidr: Option<String>,
    pub ports: (Option<i64>, Option<i64>),
    pub icmp: (Option<i64>, Option<i64>),
}

/// One rule of ModifySecurityGroupRules: its id and everything it becomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleUpdate {
    pub id: String,
    pub permission: Permission,
}

/// A request with what every action shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub action: String,
    pub dry_run: bool,
    pub request: Request,
}

/// The form of one call into its typed request.
pub fn call(form: &Form) -> Result<Call, Fault> {
    let action = form.required("Action")?;
    let version = form.get("Version").unwrap_or_default();
    let expected = if action == "GetCallerIdentity" {
        STS_VERSION
    } else {
        EC2_VERSION
    };
    if version != expected {
        return Err(Fault::client(
            "NoSuchVersion",
            format!("The requested version ({version}) of service AmazonEC2 does not exist"),
        ));
    }
    let request = request(&action, form)?;
    Ok(Call {
        dry_run: form.flag("DryRun"),
        action,
        request,
    })
}

/// The direction an action names: `...Egress` or else ingress.
fn direction_of(action: &str) -> Direction {
    if action.ends_with("Egress") {
        Direction::Egress
    } else {
        Direction::Ingress
    }
}

fn request(action: &str, f: &Form) -> Result<Request, Fault> {
    Ok(match action {
        "CreateSecurityGroup" => Request::CreateSecurityGroup {
            name: f.required("GroupName")?,
            description: f.required("GroupDescription")?,
            vpc_id: f.get("VpcId").map(str::to_string),
            tags: tag_specifications(f),
        },
        "DeleteSecurityGroup" => Request::DeleteSecurityGroup {
            group: group_ref(f)?,
        },
        "DescribeSecurityGroups" => Request::DescribeSecurityGroups {
            ids: f.strings("GroupId"),
            names: f.strings("GroupName"),
            filters: filters(f),
            page: page(f)?,
        },
        "AuthorizeSecurityGroupIngress" | "AuthorizeSecurityGroupEgress" => Request::Authorize {
            direction: direction_of(action),
            group: group_ref(f)?,
            permissions: permissions(f)?,
            tags: tag_specifications(f),
        },
        "RevokeSecurityGroupIngress" | "RevokeSecurityGroupEgress" => Request::Revoke {
            direction: direction_of(action),
            group: group_ref(f)?,
            permissions: permissions(f)?,
            rule_ids: f.strings("SecurityGroupRuleId"),
        },
        "DescribeSecurityGroupRules" => Request::DescribeSecurityGroupRules {
            rule_ids: f.strings("SecurityGroupRuleId"),
            filters: filters(f),
            page: page(f)?,
        },
        "CreateTags" => Request::CreateTags {
            resources: f.strings("ResourceId"),
            tags: tags(f, "Tag"),
        },
        "DeleteTags" => Request::DeleteTags {
            resources: f.strings("ResourceId"),
            tags: f
                .indexes("Tag")
                .into_iter()
                .filter_map(|n| {
                    let key = f.get(&format!("Tag.{n}.Key"))?.to_string();
                    Some((key, f.get(&format!("Tag.{n}.Value")).map(str::to_string)))
                })
                .collect(),
        },
        "GetCallerIdentity" => Request::GetCallerIdentity,
        other => return more_request(other, f),
    })
}

/// Edits of existing rules and the smaller lookups.
fn more_request(action: &str, f: &Form) -> Result<Request, Fault> {
    Ok(match action {
        "UpdateSecurityGroupRuleDescriptionsIngress"
        | "UpdateSecurityGroupRuleDescriptionsEgress" => Request::UpdateDescriptions {
            direction: direction_of(action),
            group: group_ref(f)?,
            permissions: permissions(f)?,
            by_id: f
                .indexes("SecurityGroupRuleDescription")
                .into_iter()
                .filter_map(|n| {
                    let base = format!("SecurityGroupRuleDescription.{n}");
                    let id = f.get(&format!("{base}.SecurityGroupRuleId"))?.to_string();
                    Some((
                        id,
                        f.get(&format!("{base}.Description")).map(str::to_string),
                    ))
                })
                .collect(),
        },
        "ModifySecurityGroupRules" => Request::ModifySecurityGroupRules {
            group: group_ref(f)?,
            rules: f
                .indexes("SecurityGroupRule")
                .into_iter()
                .map(|n| rule_update(f, &format!("SecurityGroupRule.{n}")))
                .collect::<Result<_, _>>()?,
        },
        "DescribeSecurityGroupReferences" => Request::DescribeSecurityGroupReferences {
            ids: f.strings("GroupId"),
        },
        "DescribeStaleSecurityGroups" => Request::DescribeStaleSecurityGroups,
        "DescribeTags" => Request::DescribeTags {
            filters: filters(f),
            page: page(f)?,
        },
        "DescribeVpcs" => Request::DescribeVpcs {
            ids: f.strings("VpcId"),
        },
        "CreateVpc" => Request::CreateVpc {
            cidr: f.required("CidrBlock")?,
        },
        "DescribeNetworkInterfaces" => {
            Request::DescribeNetworkInterfaces(listing(f, "NetworkInterfaceId")?)
        }
        "ModifyNetworkInterfaceAttribute" => {
            let groups = f.strings("SecurityGroupId");
            if groups.is_empty() {
                return Err(Fault::client(
                    "InvalidParameterCombination",
                    "sg models one attribute of an interface: its groups (SecurityGroupId.N)",
                ));
            }
            Request::ModifyNetworkInterfaceAttribute {
                id: f.required("NetworkInterfaceId")?,
                groups,
            }
        }
        other => return prefix_list_request(other, f),
    })
}

/// The managed prefix list actions.
fn prefix_list_request(action: &str, f: &Form) -> Result<Request, Fault> {
    Ok(match action {
        "CreateManagedPrefixList" => Request::CreatePrefixList {
            name: f.required("PrefixListName")?,
            family: f.required("AddressFamily")?,
            max_entries: f.int("MaxEntries")?,
            entries: cidrs(f, "Entry"),
        },
        "ModifyManagedPrefixList" => Request::ModifyPrefixList {
            id: f.required("PrefixListId")?,
            current_version: f.int("CurrentVersion")?,
            name: f.get("PrefixListName").map(str::to_string),
            max_entries: f.int("MaxEntries")?,
            add: cidrs(f, "AddEntry"),
            remove: cidrs(f, "RemoveEntry"),
        },
        "DeleteManagedPrefixList" => Request::DeletePrefixList {
            id: f.required("PrefixListId")?,
        },
        "DescribeManagedPrefixLists" => Request::DescribePrefixLists(listing(f, "PrefixListId")?),
        "GetManagedPrefixListEntries" => Request::GetPrefixListEntries {
            id: f.required("PrefixListId")?,
            target_version: f.int("TargetVersion")?,
            page: page(f)?,
        },
        other => return nacl_request(other, f),
    })
}

/// The network ACL actions and DescribeSubnets (A1-A27).
fn nacl_request(action: &str, f: &Form) -> Result<Request, Fault> {
    Ok(match action {
        "CreateNetworkAcl" => Request::CreateNetworkAcl {
            vpc_id: f.required("VpcId")?,
            tags: tag_specifications(f),
        },
        "CreateNetworkAclEntry" | "ReplaceNetworkAclEntry" => Request::PutNetworkAclEntry {
            replace: action == "ReplaceNetworkAclEntry",
            entry: nacl_entry(f)?,
        },
        "DeleteNetworkAclEntry" => Request::DeleteNetworkAclEntry {
            acl_id: f.required("NetworkAclId")?,
            number: required_int(f, "RuleNumber")?,
            egress: required_flag(f, "Egress")?,
        },
        "DeleteNetworkAcl" => Request::DeleteNetworkAcl {
            acl_id: f.required("NetworkAclId")?,
        },
        "ReplaceNetworkAclAssociation" => Request::ReplaceNetworkAclAssociation {
            association_id: f.required("AssociationId")?,
            acl_id: f.required("NetworkAclId")?,
        },
        "DescribeNetworkAcls" => Request::DescribeNetworkAcls(listing(f, "NetworkAclId")?),
        "DescribeSubnets" => Request::DescribeSubnets(listing(f, "SubnetId")?),
        other => {
            return Err(Fault::client(
                "InvalidAction",
                format!("The action {other} is not valid for this web service."),
            ));
        }
    })
}

/// `GroupId`, else `GroupName` (the default VPC's group of that name).
fn group_ref(f: &Form) -> Result<GroupRef, Fault> {
    match (f.get("GroupId"), f.get("GroupName")) {
        (Some(id), _) => Ok(GroupRef::Id(id.to_string())),
        (None, Some(name)) => Ok(GroupRef::Name(name.to_string())),
        (None, None) => Err(Fault::missing("GroupId")),
    }
}

fn tags(f: &Form, prefix: &str) -> Vec<Tag> {
    f.indexes(prefix)
        .into_iter()
        .filter_map(|n| {
            Some(Tag {
                key: f.get(&format!("{prefix}.{n}.Key"))?.to_string(),
                value: f
                    .get(&format!("{prefix}.{n}.Value"))
                    .unwrap_or_default()
                    .to_string(),
            })
        })
        .collect()
}

/// The tags of every `TagSpecification.N` (the resource type is the call's own).
fn tag_specifications(f: &Form) -> Vec<Tag> {
    f.indexes("TagSpecification")
        .into_iter()
        .flat_map(|n| tags(f, &format!("TagSpecification.{n}.Tag")))
        .collect()
}

fn filters(f: &Form) -> Vec<Filter> {
    f.indexes("Filter")
        .into_iter()
        .filter_map(|n| {
            Some(Filter {
                name: f.get(&format!("Filter.{n}.Name"))?.to_string(),
                values: f.strings(&format!("Filter.{n}.Value")),
            })
        })
        .collect()
}

/// `ID_KEY.N`, the filters and the page of a Describe call.
fn listing(f: &Form, id_key: &str) -> Result<Listing, Fault> {
    Ok(Listing {
        ids: f.strings(id_key),
        filters: filters(f),
        page: page(f)?,
    })
}

fn page(f: &Form) -> Result<Page, Fault> {
    Ok(Page {
        max_results: f.int("MaxResults")?,
        next_token: f.get("NextToken").map(str::to_string),
    })
}

/// `SecurityGroupRule.N.SecurityGroupRuleId` and `SecurityGroupRule.N.SecurityGroupRule.*`
/// (`IpProtocol`, ports, one of `CidrIpv4`, `CidrIpv6`, `PrefixListId`, `ReferencedGroupId`,
/// and `Description`).
fn rule_update(f: &Form, base: &str) -> Result<RuleUpdate, Fault> {
    let id = f.required(&format!("{base}.SecurityGroupRuleId"))?;
    let r = format!("{base}.SecurityGroupRule");
    let get = |m: &str| f.get(&format!("{r}.{m}")).map(str::to_string);
    let peer = match (
        get("CidrIpv4").or_else(|| get("CidrIpv6")),
        get("PrefixListId"),
        get("ReferencedGroupId"),
    ) {
        (Some(c), _, _) => PeerKind::Cidr(c),
        (None, Some(p), _) => PeerKind::PrefixList(p),
        (None, None, Some(g)) => PeerKind::Group(GroupRef::Id(g)),
        (None, None, None) => return Err(Fault::missing(&format!("{r}.CidrIpv4"))),
    };
    Ok(RuleUpdate {
        id,
        permission: Permission {
            protocol: get("IpProtocol")
                .ok_or_else(|| Fault::missing(&format!("{r}.IpProtocol")))?,
            from: f.int(&format!("{r}.FromPort"))?,
            to: f.int(&format!("{r}.ToPort"))?,
            peers: vec![PeerSpec {
                peer,
                description: get("Description"),
            }],
        },
    })
}

fn required_int(f: &Form, name: &str) -> Result<i64, Fault> {
    f.int(name)?.ok_or_else(|| Fault::missing(name))
}

/// A boolean the call must carry (`Egress`: the CLI sends `true` or `false`).
fn required_flag(f: &Form, name: &str) -> Result<bool, Fault> {
    match f.get(name) {
        Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
        Some(v) => Err(Fault::invalid(format!(
            "Invalid value '{v}' for {name}: true or false"
        ))),
        None => Err(Fault::missing(name)),
    }
}

fn nacl_entry(f: &Form) -> Result<NaclEntrySpec, Fault> {
    Ok(NaclEntrySpec {
        acl_id: f.required("NetworkAclId")?,
        number: required_int(f, "RuleNumber")?,
        protocol: f.required("Protocol")?,
        action: f.required("RuleAction")?,
        egress: required_flag(f, "Egress")?,
        cidr: f.get("CidrBlock").map(str::to_string),
        ipv6_cidr: f.get("Ipv6CidrBlock").map(str::to_string),
        ports: (f.int("PortRange.From")?, f.int("PortRange.To")?),
        icmp: (f.int("Icmp.Type")?, f.int("Icmp.Code")?),
    })
}

/// `prefix.N.Cidr` in index order.
fn cidrs(f: &Form, prefix: &str) -> Vec<String> {
    f.indexes(prefix)
        .into_iter()
        .filter_map(|n| f.get(&format!("{prefix}.{n}.Cidr")).map(str::to_string))
        .collect()
}

fn permissions(f: &Form) -> Result<Vec<Permission>, Fault> {
    f.indexes("IpPermissions")
        .into_iter()
        .map(|n| permission(f, &format!("IpPermissions.{n}")))
        .collect()
}

fn permission(f: &Form, p: &str) -> Result<Permission, Fault> {
    let mut peers = Vec::new();
    let described = |base: &str, peer: PeerKind| PeerSpec {
        peer,
        description: f.get(&format!("{base}.Description")).map(str::to_string),
    };
    for (list, member) in [("IpRanges", "CidrIp"), ("Ipv6Ranges", "CidrIpv6")] {
        for n in f.indexes(&format!("{p}.{list}")) {
            let base = format!("{p}.{list}.{n}");
            if let Some(c) = f.get(&format!("{base}.{member}")) {
                peers.push(described(&base, PeerKind::Cidr(c.to_string())));
            }
        }
    }
    for n in f.indexes(&format!("{p}.PrefixListIds")) {
        let base = format!("{p}.PrefixListIds.{n}");
        if let Some(id) = f.get(&format!("{base}.PrefixListId")) {
            peers.push(described(&base, PeerKind::PrefixList(id.to_string())));
        }
    }
    for n in f.indexes(&format!("{p}.Groups")) {
        let base = format!("{p}.Groups.{n}");
        let group = match (
            f.get(&format!("{base}.GroupId")),
            f.get(&format!("{base}.GroupName")),
        ) {
            (Some(id), _) => GroupRef::Id(id.to_string()),
            (None, Some(name)) => GroupRef::Name(name.to_string()),
            (None, None) => continue,
        };
        peers.push(described(&base, PeerKind::Group(group)));
    }
    Ok(Permission {
        protocol: f
            .get(&format!("{p}.IpProtocol"))
            .ok_or_else(|| Fault::missing(&format!("{p}.IpProtocol")))?
            .to_string(),
        from: f.int(&format!("{p}.FromPort"))?,
        to: f.int(&format!("{p}.ToPort"))?,
        peers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(s: &str) -> Form {
        Form::parse(s.as_bytes()).unwrap()
    }

    /// The body the aws CLI sends for the seed article's first command (P1, P3).
    #[test]
    fn the_articles_authorize_decodes_to_one_permission_with_its_peer() {
        let f = form(
            "Action=AuthorizeSecurityGroupIngress&Version=2016-11-15&GroupId=sg-0a1b2c3d\
             &IpPermissions.1.IpProtocol=tcp&IpPermissions.1.FromPort=443\
             &IpPermissions.1.ToPort=443&IpPermissions.1.IpRanges.1.CidrIp=0.0.0.0%2F0\
             &IpPermissions.1.IpRanges.1.Description=Public+HTTPS\
             &IpPermissions.1.Groups.1.GroupId=sg-web",
        );
        let c = call(&f).unwrap();
        let Request::Authorize {
            direction,
            group,
            permissions,
            ..
        } = c.request
        else {
            panic!("{c:?}")
        };
        assert_eq!(direction, Direction::Ingress);
        assert_eq!(group, GroupRef::Id("sg-0a1b2c3d".into()));
        assert_eq!(
            permissions,
            vec![Permission {
                protocol: "tcp".into(),
                from: Some(443),
                to: Some(443),
                peers: vec![
                    PeerSpec {
                        peer: PeerKind::Cidr("0.0.0.0/0".into()),
                        description: Some("Public HTTPS".into()),
                    },
                    PeerSpec {
                        peer: PeerKind::Group(GroupRef::Id("sg-web".into())),
                        description: None,
                    },
                ],
            }]
        );
    }

    #[test]
    fn lists_follow_their_numeric_index_not_their_text() {
        let f = form(
            "Action=DescribeSecurityGroups&Version=2016-11-15&GroupId.10=sg-c&GroupId.2=sg-b\
             &GroupId.1=sg-a&Filter.1.Name=tag%3Aenv&Filter.1.Value.1=prod&Filter.1.Value.2=dev",
        );
        let Request::DescribeSecurityGroups { ids, filters, .. } = call(&f).unwrap().request else {
            panic!()
        };
        assert_eq!(ids, ["sg-a", "sg-b", "sg-c"]);
        assert_eq!(filters[0].name, "tag:env");
        assert_eq!(filters[0].values, ["prod", "dev"]);
    }

    #[test]
    fn create_reads_tag_specifications_and_dry_run() {
        let f = form(
            "Action=CreateSecurityGroup&Version=2016-11-15&GroupName=web\
             &GroupDescription=Web+tier&TagSpecification.1.ResourceType=security-group\
             &TagSpecification.1.Tag.1.Key=env&TagSpecification.1.Tag.1.Value=prod&DryRun=true",
        );
        let c = call(&f).unwrap();
        assert!(c.dry_run);
        let Request::CreateSecurityGroup { tags, .. } = c.request else {
            panic!()
        };
        assert_eq!(
            tags,
            [Tag {
                key: "env".into(),
                value: "prod".into()
            }]
        );
    }

    /// The body the aws CLI sends for `create-network-acl-entry --ingress --rule-number 90
    /// --protocol tcp --port-range From=22,To=22 --cidr-block ... --rule-action deny`.
    #[test]
    fn a_nacl_entry_decodes_with_its_port_range_and_icmp_members() {
        let f = form(
            "Action=CreateNetworkAclEntry&Version=2016-11-15&NetworkAclId=acl-1&RuleNumber=90\
             &Protocol=tcp&RuleAction=deny&Egress=false&CidrBlock=198.51.100.0%2F24\
             &PortRange.From=22&PortRange.To=22&Icmp.Type=3&Icmp.Code=4",
        );
        let Request::PutNetworkAclEntry { replace, entry } = call(&f).unwrap().request else {
            panic!()
        };
        assert!(!replace);
        assert_eq!(
            entry,
            NaclEntrySpec {
                acl_id: "acl-1".into(),
                number: 90,
                protocol: "tcp".into(),
                action: "deny".into(),
                egress: false,
                cidr: Some("198.51.100.0/24".into()),
                ipv6_cidr: None,
                ports: (Some(22), Some(22)),
                icmp: (Some(3), Some(4)),
            }
        );
        let missing = form(
            "Action=DeleteNetworkAclEntry&Version=2016-11-15&NetworkAclId=acl-1&RuleNumber=90",
        );
        assert_eq!(call(&missing).unwrap_err().code, "MissingParameter");
    }

    #[test]
    fn bad_input_has_ec2s_codes() {
        let code = |s: &str| call(&form(s)).unwrap_err().code;
        assert_eq!(code("Version=2016-11-15"), "MissingParameter");
        assert_eq!(
            code("Action=RunInstances&Version=2016-11-15"),
            "InvalidAction"
        );
        assert_eq!(
            code("Action=DescribeSecurityGroups&Version=2014-01-01"),
            "NoSuchVersion"
        );
        assert_eq!(
            code("Action=DeleteSecurityGroup&Version=2016-11-15"),
            "MissingParameter"
        );
        assert!(Form::parse(b"a=%zz").is_err());
        assert!(Form::parse(b"a=%2").is_err());
    }
}
